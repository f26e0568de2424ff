#include "camlink/frame_queue.h"

namespace camlink {

FrameQueue::FrameQueue(size_t max_bytes, size_t max_frames)
    : max_bytes_(max_bytes), max_frames_(max_frames == 0 ? 1 : max_frames) {}

void FrameQueue::drop_front() {
  bytes_ -= q_.front().data.size();
  q_.pop_front();
  ++dropped_;
}

PushResult FrameQueue::push(QueuedFrame&& f) {
  PushResult r;
  size_t n = f.data.size();
  if (n > max_bytes_) {
    ++dropped_;
    return r;
  }
  uint32_t before = dropped_;
  while (!q_.empty() && (q_.size() + 1 > max_frames_ || bytes_ + n > max_bytes_)) drop_front();
  bytes_ += n;
  q_.push_back(std::move(f));
  r.accepted = true;
  r.dropped = dropped_ - before;
  return r;
}

QueuedFrame* FrameQueue::find(uint32_t seq) {
  for (auto& f : q_)
    if (f.seq == seq) return &f;
  return nullptr;
}

bool FrameQueue::remove(uint32_t seq) {
  for (auto it = q_.begin(); it != q_.end(); ++it) {
    if (it->seq == seq) {
      bytes_ -= it->data.size();
      q_.erase(it);
      return true;
    }
  }
  return false;
}

void FrameQueue::clear() {
  q_.clear();
  bytes_ = 0;
}

}  // namespace camlink
