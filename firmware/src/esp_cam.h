// esp_camera adapter: AI-Thinker pins, frame buffers planned from the PSRAM that is
// really there (camlink::plan_camera), latest-frame grabbing with two PSRAM buffers
// (one DRAM buffer without PSRAM); each capture is copied into a camlink::Bytes and
// the driver buffer is returned at once. Bring-up and recovery follow
// camlink::bring_up_camera: retry after a PWDN power-cycle, then a small fallback,
// before the caller reboots. A mutex serialises capture (capture task) and
// settings (loop task).
#pragma once

#include <cstdint>
#include <string>

#include "camlink/camera_plan.h"
#include "camlink/interfaces.h"
#include "freertos/FreeRTOS.h"
#include "freertos/semphr.h"

namespace esp {

class EspCamera : public camlink::Camera, public camlink::CameraDriver {
 public:
  /// Detect PSRAM, plan, bring up (with recovery), apply settings; false: reboot.
  bool begin(const camlink::CameraSettings& s, size_t queue_max);
  /// Deinit, power-cycle, bring up again with the current plan, re-apply settings.
  bool reinit();
  bool capture(camlink::Bytes* out) override;
  bool apply(const camlink::CameraSettings& s, std::string* err) override;
  /// Power the sensor down (deep sleep).
  void power_down();

  // camlink::CameraDriver
  bool init(const camlink::CameraPlan& plan, std::string* err) override;
  void deinit() override;
  void power_cycle() override;

  const camlink::CameraPlan& plan() const { return plan_; }
  const char* sensor_name() const { return sensor_.name; }
  camlink::FrameSize max_frame_size() const;

 private:
  bool apply_locked(const camlink::CameraSettings& s, std::string* err);
  void discard(int n);
  SemaphoreHandle_t lock_ = nullptr;
  camlink::CameraPlan plan_;
  camlink::SensorInfo sensor_{"unknown", camlink::FrameSize::kSVGA};
  camlink::CameraSettings settings_;
  bool initialised_ = false;
};

}  // namespace esp
