// esp_camera adapter: AI-Thinker pins, JPEG frame buffers in PSRAM, latest-frame
// grabbing; each capture is copied into a camlink::Bytes (PSRAM) and the driver
// buffer is returned at once.
#pragma once

#include <cstdint>
#include <string>

#include "camlink/interfaces.h"

namespace esp {

class EspCamera : public camlink::Camera {
 public:
  /// esp_camera_init + the given settings; discards the first frames.
  bool begin(const camlink::CameraSettings& s);
  bool capture(camlink::Bytes* out) override;
  bool apply(const camlink::CameraSettings& s, std::string* err) override;
  uint32_t consecutive_failures() const { return failures_; }

 private:
  void discard(int n);
  uint32_t failures_ = 0;
};

}  // namespace esp
