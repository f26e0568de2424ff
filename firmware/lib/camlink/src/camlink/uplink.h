// Uplink: publishes the queued frames chunk by chunk (QoS 1) and tracks the
// acknowledgements.
//
// - At most `window` chunk publishes await their PUBACK at once.
// - A frame leaves the queue only when every chunk has been acknowledged.
// - On (re)connect, and when no PUBACK arrived for ack_timeout_ms, everything
//   unacknowledged is sent again from each frame's first unacknowledged chunk.
//   Duplicates on the wire are fine: the receiver ignores them.
// - A frame still not fully acknowledged restart_after_ms after its first chunk went
//   out (e.g. across a long outage) is sent again whole, in a new generation: the
//   receiver has dropped its partial copy by then (docs/protocol.md). frames_sent
//   counts a frame once every chunk was acknowledged within one generation.
// - Acks are matched by message id AND generation. Publishes given up by a resync are
//   remembered ("retired") until their late ack arrives: a late ack is recognised as
//   stale, and a new publish that reuses a retired id needs one ack per outstanding
//   publish with that id before it counts as delivered.
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

/// The ingestor drops a partial frame 60 s after its first chunk (contract default,
/// ingest.partial_timeout_s). A frame whose first chunk went out this long ago and that
/// is still not fully acknowledged is sent again whole: 10 s of margin for the
/// broker's and the receiver's queues.
constexpr uint32_t kDefaultRestartAfterMs = 50000;

struct UplinkConfig {
  size_t chunk_data = kDefaultChunkData;
  size_t window = 4;
  uint32_t ack_timeout_ms = 30000;
  uint32_t retry_after_fail_ms = 250;
  /// Resend the whole frame when it is still not fully acknowledged this long after its
  /// first chunk went out (0 = never): below the receiver's partial-frame timeout.
  uint32_t restart_after_ms = kDefaultRestartAfterMs;
};

struct UplinkStats {
  uint64_t chunks_published = 0;
  uint64_t chunks_acked = 0;
  uint64_t chunks_resent = 0;    // publishes of a chunk that had been published before
  uint64_t publish_failures = 0;
  uint64_t ack_timeouts = 0;
  uint64_t unmatched_acks = 0;   // acks of other messages (status) or of publishes forgotten by a resync
  uint64_t frames_sent = 0;       // frames whose every chunk was acked within one generation
  uint64_t frames_restarted = 0;  // frames sent again whole (the receiver gave them up)
  uint64_t stale_acks = 0;        // acks of publishes the core had already given up on
};

class Uplink {
 public:
  Uplink(MqttPublisher& mqtt, Clock& clock, FrameQueue& queue, std::string frame_topic,
         uint32_t boot_id, UplinkConfig cfg);

  void on_connected();
  void on_disconnected();
  void on_published(int msg_id);
  size_t retired() const { return retired_.size(); }
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
    uint32_t gen;
    uint64_t sent_ms;
    uint32_t acks_needed;  // > 1 when the id was still outstanding for an older publish
  };
  struct Retired {
    int msg_id;
    uint64_t at_ms;
  };
  static constexpr size_t kMaxRetired = 64;

  QueuedFrame* next_frame(uint64_t now);
  void freeze_header(QueuedFrame& f, uint64_t now);
  void maybe_restart(QueuedFrame& f, uint64_t now);
  void retire(const InFlight& e, uint64_t now);
  void retire_all(uint64_t now);
  uint32_t claim_retired(int msg_id);
  void resync(uint64_t now);

  MqttPublisher& mqtt_;
  Clock& clock_;
  FrameQueue& queue_;
  std::string topic_;
  uint32_t boot_id_;
  UplinkConfig cfg_;
  bool connected_ = false;
  uint64_t retry_at_ = 0;
  std::vector<InFlight> inflight_;
  std::vector<Retired> retired_;
  std::vector<uint8_t> scratch_;
  UplinkStats stats_;
};

}  // namespace camlink
