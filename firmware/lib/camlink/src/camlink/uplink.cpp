#include "camlink/uplink.h"

#include <algorithm>

namespace camlink {

Uplink::Uplink(MqttPublisher& mqtt, Clock& clock, FrameQueue& queue, std::string frame_topic,
               uint32_t boot_id, UplinkConfig cfg)
    : mqtt_(mqtt), clock_(clock), queue_(queue), topic_(std::move(frame_topic)),
      boot_id_(boot_id), cfg_(cfg) {
  if (cfg_.window == 0) cfg_.window = 1;
  if (cfg_.chunk_data == 0) cfg_.chunk_data = kDefaultChunkData;
  inflight_.reserve(cfg_.window);
  scratch_.reserve(kHeaderLen + cfg_.chunk_data);
}

uint16_t Uplink::first_unacked(const QueuedFrame& f) {
  uint16_t i = 0;
  while (i < f.chunk_count && f.acked(i)) ++i;
  return i;
}

void Uplink::resync() {
  inflight_.clear();
  for (auto& f : queue_.frames()) f.next_send = first_unacked(f);
}

void Uplink::on_connected() {
  connected_ = true;
  retry_at_ = 0;
  resync();
}

void Uplink::on_disconnected() {
  connected_ = false;
  inflight_.clear();
}

void Uplink::on_published(int msg_id) {
  auto it = std::find_if(inflight_.begin(), inflight_.end(),
                         [msg_id](const InFlight& e) { return e.msg_id == msg_id; });
  if (it == inflight_.end()) {
    ++stats_.unmatched_acks;
    return;
  }
  InFlight e = *it;
  inflight_.erase(it);
  QueuedFrame* f = queue_.find(e.seq);
  if (f == nullptr || e.index >= f->chunk_count) return;
  if (!f->acked(e.index)) {
    f->chunk_state[e.index] = QueuedFrame::kAcked;
    ++f->n_acked;
    ++stats_.chunks_acked;
  }
  if (f->complete()) {
    ++stats_.frames_sent;
    uint32_t seq = f->seq;
    queue_.remove(seq);
    inflight_.erase(std::remove_if(inflight_.begin(), inflight_.end(),
                                   [seq](const InFlight& x) { return x.seq == seq; }),
                    inflight_.end());
  }
}

QueuedFrame* Uplink::next_frame() {
  for (auto& f : queue_.frames()) {
    while (f.next_send < f.chunk_count && f.acked(f.next_send)) ++f.next_send;
    if (f.next_send < f.chunk_count) return &f;
  }
  return nullptr;
}

void Uplink::freeze_header(QueuedFrame& f, uint64_t now) {
  if ((f.flags & kFlagClockSynced) == 0) {
    uint64_t wall = 0;
    if (clock_.wall_ms(&wall)) {
      uint64_t age = now >= f.mono_ms ? now - f.mono_ms : 0;
      if (wall > age) {
        f.capture_ms = wall - age;
        f.flags |= kFlagClockSynced;
      }
    }
  }
  f.header_frozen = true;
}

void Uplink::poll() {
  if (!connected_) return;
  uint64_t now = clock_.mono_ms();
  if (!inflight_.empty()) {
    uint64_t oldest = inflight_.front().sent_ms;
    for (const auto& e : inflight_) oldest = std::min(oldest, e.sent_ms);
    if (now - oldest >= cfg_.ack_timeout_ms) {
      ++stats_.ack_timeouts;
      resync();
    }
  }
  if (now < retry_at_) return;
  while (inflight_.size() < cfg_.window) {
    QueuedFrame* f = next_frame();
    if (f == nullptr) break;
    bool first_time = !f->header_frozen;
    if (first_time) freeze_header(*f, now);
    FrameMeta meta;
    meta.boot_id = boot_id_;
    meta.frame_seq = f->seq;
    meta.flags = f->flags;
    meta.capture_ms = f->capture_ms;
    meta.frame_len = static_cast<uint32_t>(f->data.size());
    meta.frame_crc32 = f->crc;
    uint16_t index = f->next_send;
    if (!build_chunk(meta, f->data.data(), cfg_.chunk_data, index, scratch_)) {
      // Cannot happen for a frame the node accepted; drop it rather than spin.
      queue_.remove(f->seq);
      continue;
    }
    int mid = mqtt_.publish(topic_.c_str(), scratch_.data(), scratch_.size(), 1, false);
    if (mid < 0) {
      ++stats_.publish_failures;
      retry_at_ = now + cfg_.retry_after_fail_ms;
      break;
    }
    if (f->chunk_state[index] == QueuedFrame::kSent) ++stats_.chunks_resent;
    f->chunk_state[index] = QueuedFrame::kSent;
    inflight_.push_back(InFlight{mid, f->seq, index, now});
    ++stats_.chunks_published;
    ++f->next_send;
  }
}

}  // namespace camlink
