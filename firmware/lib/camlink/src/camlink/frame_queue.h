// Bounded offline frame queue: a byte budget and a frame count. When a new
// frame does not fit, the oldest frames are dropped first (and counted). A
// frame leaves normally only when every one of its chunks has been acknowledged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "camlink/bytes.h"

namespace camlink {

struct QueuedFrame {
  uint32_t seq = 0;
  uint8_t flags = 0;          // kFlagClockSynced when capture_ms is wall-clock time
  uint64_t capture_ms = 0;    // Unix ms, 0 = unknown
  uint64_t mono_ms = 0;       // monotonic capture time (to back-date after a late clock sync)
  uint32_t crc = 0;           // CRC-32 of data
  uint16_t chunk_count = 0;
  Bytes data;

  // Transmission state (owned by Uplink).
  enum ChunkState : uint8_t { kUnsent = 0, kSent = 1, kAcked = 2 };
  std::vector<uint8_t> chunk_state;  // one ChunkState per chunk
  uint16_t n_acked = 0;
  uint16_t next_send = 0;      // next chunk index to publish
  bool header_frozen = false;  // a chunk went on the wire: header fields may no longer change
  // A generation is one attempt at delivering the whole frame. The receiver forgets a
  // partial frame after its timeout; when this generation's first chunk went out longer
  // ago than that, the frame is sent again whole in a new generation, and acks of the
  // old generation's publishes no longer count.
  uint32_t generation = 0;
  bool gen_started = false;    // a chunk of this generation has been published
  uint64_t first_sent_ms = 0;  // when (monotonic)

  bool acked(uint16_t i) const { return chunk_state[i] == kAcked; }
  bool complete() const { return chunk_count > 0 && n_acked == chunk_count; }
};

struct PushResult {
  bool accepted = false;  // false: the frame alone exceeds the byte budget (counted as dropped)
  uint32_t dropped = 0;   // older frames dropped to make room
};

class FrameQueue {
 public:
  FrameQueue(size_t max_bytes, size_t max_frames);

  PushResult push(QueuedFrame&& f);
  QueuedFrame* find(uint32_t seq);
  /// Remove a frame (normally once fully acknowledged). False if unknown.
  bool remove(uint32_t seq);
  void clear();

  size_t size() const { return q_.size(); }
  size_t bytes() const { return bytes_; }
  bool empty() const { return q_.empty(); }
  size_t max_bytes() const { return max_bytes_; }
  size_t max_frames() const { return max_frames_; }
  uint32_t dropped() const { return dropped_; }

  std::deque<QueuedFrame>& frames() { return q_; }
  const std::deque<QueuedFrame>& frames() const { return q_; }

 private:
  void drop_front();

  std::deque<QueuedFrame> q_;
  size_t bytes_ = 0;
  size_t max_bytes_;
  size_t max_frames_;
  uint32_t dropped_ = 0;
};

}  // namespace camlink
