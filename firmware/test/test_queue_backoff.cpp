// Frame queue budget and backoff.
#include <set>

#include "camlink/backoff.h"
#include "camlink/frame_queue.h"
#include "tinytest.h"

using namespace camlink;

namespace {

QueuedFrame frame(uint32_t seq, size_t n) {
  QueuedFrame f;
  f.seq = seq;
  f.data.allocate(n);
  f.chunk_count = 1;
  f.chunk_state.assign(1, QueuedFrame::kUnsent);
  return f;
}

}  // namespace

TEST(queue_byte_budget_drops_oldest_first) {
  FrameQueue q(1000, 100);
  CHECK(q.push(frame(0, 400)).accepted);
  CHECK(q.push(frame(1, 400)).accepted);
  CHECK_EQ(q.bytes(), 800u);
  PushResult r = q.push(frame(2, 400));  // needs 1200 > 1000: frame 0 goes
  CHECK(r.accepted);
  CHECK_EQ(r.dropped, 1u);
  CHECK_EQ(q.size(), 2u);
  CHECK_EQ(q.frames().front().seq, 1u);
  CHECK_EQ(q.bytes(), 800u);
  r = q.push(frame(3, 1000));  // needs everything
  CHECK_EQ(r.dropped, 2u);
  CHECK_EQ(q.size(), 1u);
  CHECK_EQ(q.dropped(), 3u);
  r = q.push(frame(4, 1001));  // larger than the whole budget: refused, counted
  CHECK(!r.accepted);
  CHECK_EQ(q.dropped(), 4u);
  CHECK_EQ(q.size(), 1u);
  CHECK_EQ(q.frames().front().seq, 3u);
}

TEST(queue_count_budget_and_remove) {
  FrameQueue q(1 << 20, 3);
  for (uint32_t i = 0; i < 5; ++i) q.push(frame(i, 10));
  CHECK_EQ(q.size(), 3u);
  CHECK_EQ(q.dropped(), 2u);
  CHECK_EQ(q.frames().front().seq, 2u);
  CHECK(q.find(3) != nullptr);
  CHECK(q.find(1) == nullptr);
  CHECK(q.remove(3));  // from the middle
  CHECK(!q.remove(3));
  CHECK_EQ(q.size(), 2u);
  CHECK_EQ(q.bytes(), 20u);
  CHECK_EQ(q.frames()[0].seq, 2u);
  CHECK_EQ(q.frames()[1].seq, 4u);
}

TEST(bytes_allocator_is_pluggable) {
  static int allocs = 0, frees = 0;
  Allocator old = frame_allocator();
  set_frame_allocator({[](size_t n) -> void* { ++allocs; return ::operator new(n); },
                       [](void* p) { ++frees; ::operator delete(p); }});
  {
    Bytes b;
    CHECK(b.allocate(16));
    Bytes c = std::move(b);
    CHECK(b.empty());
    CHECK_EQ(c.size(), 16u);
    c.truncate(4);
    CHECK_EQ(c.size(), 4u);
    CHECK(!b.allocate(0));
  }
  set_frame_allocator(old);
  CHECK_EQ(allocs, 1);
  CHECK_EQ(frees, 1);
}

TEST(backoff_grows_caps_and_jitters) {
  XorShiftRng rng(42);
  Backoff b(500, 30000, rng);
  uint32_t caps[] = {500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000};
  for (uint32_t cap : caps) {
    CHECK_EQ(b.current_cap_ms(), cap);
    uint32_t d = b.next_delay_ms();
    CHECK(d >= cap / 2);
    CHECK(d <= cap);
  }
  // Many draws at the cap spread over the range (jitter, not a constant).
  std::set<uint32_t> seen;
  for (int i = 0; i < 100; ++i) seen.insert(b.next_delay_ms());
  CHECK(seen.size() > 50);
  b.reset();
  CHECK_EQ(b.attempts(), 0u);
  CHECK_EQ(b.current_cap_ms(), 500u);
  // Same seed, same sequence.
  XorShiftRng r1(7), r2(7);
  Backoff b1(100, 10000, r1), b2(100, 10000, r2);
  for (int i = 0; i < 20; ++i) CHECK_EQ(b1.next_delay_ms(), b2.next_delay_ms());
  // Stays bounded after very many attempts (no shift overflow).
  for (int i = 0; i < 200; ++i) CHECK(b1.next_delay_ms() <= 10000u);
}
