// Camera bring-up decisions, portable: frame buffers sized from the PSRAM that is
// really there, the sensor's limits, and recovery (PWDN power-cycle + re-init, then a
// smaller no-PSRAM-style configuration) before the device resorts to a reboot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "camlink/command.h"

namespace camlink {

struct CameraPlan {
  FrameSize init_size = FrameSize::kUXGA;  // the driver sizes its JPEG buffers from it
  uint8_t fb_count = 2;
  bool fb_in_psram = true;
  bool grab_latest = true;                 // CAMERA_GRAB_LATEST needs fb_count >= 2
  size_t queue_bytes = 0;                  // offline queue budget
  const char* name = "psram";
};

/// Bytes of one JPEG frame buffer the driver allocates for a size (w*h/5).
size_t jpeg_buffer_bytes(FrameSize f);
void frame_size_dims(FrameSize f, uint16_t* w, uint16_t* h);

/// With PSRAM (`psram_bytes` > 0): two buffers at the sensor's largest size in PSRAM,
/// queue up to `queue_max` and at most half the PSRAM left. Without: one buffer in
/// internal RAM at most VGA (61 KB; SVGA's 96 KB does not fit beside Wi-Fi + TLS) and
/// a 64 KB queue.
CameraPlan plan_camera(size_t psram_bytes, FrameSize sensor_max, size_t queue_max);
/// The last resort before a reboot: one small buffer in internal RAM.
CameraPlan fallback_plan();

/// Sensor by its SCCB product id (esp32-camera sensor_id_t.PID): name, largest size
/// in our FrameSize range. Unknown ids: "unknown", SVGA.
struct SensorInfo {
  const char* name;
  FrameSize max_size;
};
SensorInfo sensor_info(uint16_t pid);

/// The driver side of bring-up (the ESP32 layer: esp_camera_init/deinit, PWDN pin).
class CameraDriver {
 public:
  virtual ~CameraDriver() = default;
  virtual bool init(const CameraPlan& plan, std::string* err) = 0;
  virtual void deinit() = 0;
  /// Hold PWDN high, wait, release: the sensor restarts from its power-on state.
  virtual void power_cycle() = 0;
};

struct BringUpResult {
  bool ok = false;
  CameraPlan plan;      // the configuration that worked
  int attempts = 0;
  std::string last_error;
};

/// Init with `plan`; on failure power-cycle and retry it once; then power-cycle and
/// try fallback_plan(). Only when all fail does the caller reboot.
BringUpResult bring_up_camera(CameraDriver& d, const CameraPlan& plan);

/// Counts consecutive capture failures; at `limit` asks for a re-init (power-cycle),
/// and only after `max_reinits` re-inits in a row without a good frame for a reboot.
class CameraHealth {
 public:
  enum class Action : uint8_t { kNone, kReinit, kReboot };
  CameraHealth(uint32_t limit, uint32_t max_reinits) : limit_(limit), max_reinits_(max_reinits) {}
  Action on_capture(bool ok);
  void on_reinit_done(bool ok);
  uint32_t reinits() const { return reinits_total_; }

 private:
  uint32_t limit_, max_reinits_;
  uint32_t failures_ = 0;
  uint32_t reinits_in_row_ = 0;
  uint32_t reinits_total_ = 0;
};

/// Capture cadence: due every interval; after a stall restart the cadence instead of
/// bursting to catch up. Shared by CamNode::tick() and the ESP32 capture task.
class Cadence {
 public:
  explicit Cadence(uint64_t start_ms) : next_ms_(start_ms) {}
  bool due(uint64_t now) const { return now >= next_ms_; }
  /// After a capture that started when due: schedule the next one.
  void advance(uint32_t interval_ms, uint64_t now_after);
  void restart(uint64_t now, uint32_t interval_ms) { next_ms_ = now + interval_ms; }
  uint64_t ms_until(uint64_t now) const { return next_ms_ > now ? next_ms_ - now : 0; }

 private:
  uint64_t next_ms_;
};

/// Deep-sleep timelapse: the identity kept in RTC memory across deep sleep so frames
/// stay unique: boot_id is kept and frame_seq continues. A power-on (or corrupted RTC
/// memory) starts a new boot_id at frame_seq 0.
struct SleepIdentity {
  uint32_t magic = 0;
  uint32_t boot_id = 0;
  uint32_t next_seq = 0;
  uint32_t wakes = 0;
  uint32_t check = 0;  // boot_id ^ next_seq ^ wakes ^ kSalt
};
constexpr uint32_t kSleepMagic = 0xCA57ACE5u;
/// Decide this boot's identity from the RTC copy; `woke_from_sleep` = reset reason
/// deep sleep; `fresh_boot_id` = a new random id used when not resuming.
void resume_identity(SleepIdentity* rtc, bool woke_from_sleep, uint32_t fresh_boot_id,
                     uint32_t* boot_id, uint32_t* first_seq);
/// Before sleeping: remember the next frame_seq.
void save_identity(SleepIdentity* rtc, uint32_t boot_id, uint32_t next_seq);

}  // namespace camlink
