// Uplink: publishes the queued frames chunk by chunk (QoS 1) and tracks the
// acknowledgements.
//
// - At most `window` chunk publishes await their PUBACK at once.
// - A frame leaves the queue only when every chunk has been acknowledged.
// - On (re)connect, and when no PUBACK arrived for ack_timeout_ms, everything
//   unacknowledged is sent again from each frame's first unacknowledged chunk.
//   Duplicates on the wire are fine: the receiver ignores them.
// - A frame's header fields are frozen when its first chunk goes on the wire.
//   A frame captured before the clock was synchronised but sent after is
//   back-dated from its monotonic capture time and flagged clock-synced.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "camlink/chunk.h"
#include "camlink/frame_queue.h"
#include "camlink/interfaces.h"

namespace camlink {

struct UplinkConfig {
  size_t chunk_data = kDefaultChunkData;
  size_t window = 4;
  uint32_t ack_timeout_ms = 30000;
  uint32_t retry_after_fail_ms = 250;
};

struct UplinkStats {
  uint64_t chunks_published = 0;
  uint64_t chunks_acked = 0;
  uint64_t chunks_resent = 0;    // publishes of a chunk that had been published before
  uint64_t publish_failures = 0;
  uint64_t ack_timeouts = 0;
  uint64_t unmatched_acks = 0;   // acks of other messages (status) or of publishes forgotten by a resync
  uint64_t frames_sent = 0;
};

class Uplink {
 public:
  Uplink(MqttPublisher& mqtt, Clock& clock, FrameQueue& queue, std::string frame_topic,
         uint32_t boot_id, UplinkConfig cfg);

  void on_connected();
  void on_disconnected();
  void on_published(int msg_id);
  /// Publish as many chunks as the window allows.
  void poll();

  bool connected() const { return connected_; }
  size_t inflight() const { return inflight_.size(); }
  bool idle() const { return queue_.empty() && inflight_.empty(); }
  const UplinkStats& stats() const { return stats_; }
  const UplinkConfig& config() const { return cfg_; }
  /// Index of the first chunk of `seq` that is not acknowledged (chunk_count if all).
  static uint16_t first_unacked(const QueuedFrame& f);

 private:
  struct InFlight {
    int msg_id;
    uint32_t seq;
    uint16_t index;
    uint64_t sent_ms;
  };

  QueuedFrame* next_frame();
  void freeze_header(QueuedFrame& f, uint64_t now);
  void resync();

  MqttPublisher& mqtt_;
  Clock& clock_;
  FrameQueue& queue_;
  std::string topic_;
  uint32_t boot_id_;
  UplinkConfig cfg_;
  bool connected_ = false;
  uint64_t retry_at_ = 0;
  std::vector<InFlight> inflight_;
  std::vector<uint8_t> scratch_;
  UplinkStats stats_;
};

}  // namespace camlink
