// CamNode: the device's whole behaviour above the drivers. Captures on the
// configured interval, checks each JPEG, queues it (bounded, oldest dropped),
// publishes it through the Uplink, answers commands and publishes its status.
// The same class runs on the ESP32 (firmware/src) and on the host (vcam).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "camlink/command.h"
#include "camlink/frame_queue.h"
#include "camlink/interfaces.h"
#include "camlink/status.h"
#include "camlink/uplink.h"

namespace camlink {

/// `^[A-Za-z0-9_-]{1,32}$`
bool valid_device_id(const std::string& id);

struct NodeConfig {
  std::string device_id;
  std::string prefix = "cam";
  std::string fw = "";
  uint32_t boot_id = 0;
  std::string reset_reason = "unknown";
  CameraSettings camera;
  UplinkConfig uplink;
  size_t queue_bytes = 2u * 1024u * 1024u;
  size_t queue_frames = 64;
  uint32_t status_period_ms = 60000;
  uint32_t capture_limit = 0;  // 0 = capture forever (the device); >0 = stop after N (tools)
  /// Largest frame size the frame buffers (PSRAM or not) and the sensor allow.
  FrameSize max_frame_size = FrameSize::kUXGA;
  /// First frame_seq of this boot: 0 after a power-on; after a deep-sleep wake the
  /// boot_id is kept and numbering continues (RTC memory), so (boot_id, frame_seq)
  /// stays unique.
  uint32_t first_seq = 0;
  /// false: tick() does not capture; a capture task calls submit_capture() (ESP32).
  bool capture_in_tick = true;
};

struct NodeStats {
  uint64_t frames_captured = 0;
  uint64_t frames_invalid = 0;
  uint64_t capture_errors = 0;
  uint64_t frames_too_large = 0;  // more chunks than the format allows / out of memory
  uint64_t cmd_ok = 0;
  uint64_t cmd_errors = 0;
  uint64_t reconnects = 0;
  uint64_t status_published = 0;
  std::string last_cmd_error;
};

class CamNode {
 public:
  CamNode(NodeConfig cfg, Clock& clock, MqttPublisher& mqtt, Camera& camera, SystemInfo& sys);

  const std::string& frame_topic() const { return frame_topic_; }
  const std::string& status_topic() const { return status_topic_; }
  const std::string& cmd_topic() const { return cmd_topic_; }

  /// Transport events (see interfaces.h for the threading rule).
  void on_connected();
  void on_disconnected();
  void on_published(int msg_id);
  void on_message(const char* topic, const uint8_t* payload, size_t len);

  /// Drive everything: capture when due, publish chunks, periodic status.
  void tick();

  /// Capture one frame now (normally called by tick()).
  void capture_now();
  /// Enqueue an already captured JPEG (what capture_now() does after the camera).
  /// Returns false when the frame was refused (invalid JPEG, too large).
  bool submit(Bytes&& jpeg, uint64_t mono_ms);
  /// A frame captured elsewhere (capture task): counted as captured, then submit().
  bool submit_capture(Bytes&& jpeg, uint64_t mono_ms);
  /// A capture that failed elsewhere (capture task).
  void note_capture_error() { ++stats_.capture_errors; }
  void set_ota_handler(OtaHandler* h) { ota_ = h; }
  /// frame_seq the next frame will get (kept across deep sleep).
  uint32_t next_seq() const { return next_seq_; }

  /// Publish the retained status now (if connected). Returns the message id or -1.
  int publish_status();
  std::string status_json(const char* state = "online");

  bool reboot_requested() const { return reboot_requested_; }
  /// capture_limit reached and everything acknowledged.
  bool done() const;
  bool captures_finished() const;

  const NodeConfig& config() const { return cfg_; }
  const CameraSettings& camera_settings() const { return cfg_.camera; }
  const NodeStats& stats() const { return stats_; }
  const Uplink& uplink() const { return uplink_; }
  const FrameQueue& queue() const { return queue_; }
  /// Milliseconds until the next capture is due (0 = now); for sleeping loops.
  uint64_t ms_until_next_capture();

 private:
  void handle_command(const uint8_t* payload, size_t len);
  void apply_settings(const CameraSettings& s);

  NodeConfig cfg_;
  Clock& clock_;
  MqttPublisher& mqtt_;
  Camera& camera_;
  SystemInfo& sys_;
  OtaHandler* ota_ = nullptr;
  std::string frame_topic_, status_topic_, cmd_topic_;
  FrameQueue queue_;
  Uplink uplink_;
  NodeStats stats_;
  uint32_t next_seq_ = 0;
  uint64_t next_capture_ms_ = 0;
  uint64_t next_status_ms_ = 0;
  bool connected_ = false;
  bool ever_connected_ = false;
  bool reboot_requested_ = false;
  bool status_due_ = false;
};

}  // namespace camlink
