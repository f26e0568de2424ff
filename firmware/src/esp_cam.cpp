#include "esp_cam.h"

#include <Arduino.h>

#include "app_config.h"
#include "board_pins.h"
#include "esp_camera.h"

namespace esp {
namespace {

framesize_t to_esp(camlink::FrameSize f) {
  switch (f) {
    case camlink::FrameSize::kQQVGA: return FRAMESIZE_QQVGA;
    case camlink::FrameSize::kQCIF: return FRAMESIZE_QCIF;
    case camlink::FrameSize::kHQVGA: return FRAMESIZE_HQVGA;
    case camlink::FrameSize::k240X240: return FRAMESIZE_240X240;
    case camlink::FrameSize::kQVGA: return FRAMESIZE_QVGA;
    case camlink::FrameSize::kCIF: return FRAMESIZE_CIF;
    case camlink::FrameSize::kHVGA: return FRAMESIZE_HVGA;
    case camlink::FrameSize::kVGA: return FRAMESIZE_VGA;
    case camlink::FrameSize::kSVGA: return FRAMESIZE_SVGA;
    case camlink::FrameSize::kXGA: return FRAMESIZE_XGA;
    case camlink::FrameSize::kHD: return FRAMESIZE_HD;
    case camlink::FrameSize::kSXGA: return FRAMESIZE_SXGA;
    case camlink::FrameSize::kUXGA: return FRAMESIZE_UXGA;
  }
  return FRAMESIZE_SVGA;
}

}  // namespace

bool EspCamera::begin(const camlink::CameraSettings& s) {
  camera_config_t c = {};
  c.pin_pwdn = CAM_PIN_PWDN;
  c.pin_reset = CAM_PIN_RESET;
  c.pin_xclk = CAM_PIN_XCLK;
  c.pin_sccb_sda = CAM_PIN_SIOD;
  c.pin_sccb_scl = CAM_PIN_SIOC;
  c.pin_d7 = CAM_PIN_D7;
  c.pin_d6 = CAM_PIN_D6;
  c.pin_d5 = CAM_PIN_D5;
  c.pin_d4 = CAM_PIN_D4;
  c.pin_d3 = CAM_PIN_D3;
  c.pin_d2 = CAM_PIN_D2;
  c.pin_d1 = CAM_PIN_D1;
  c.pin_d0 = CAM_PIN_D0;
  c.pin_vsync = CAM_PIN_VSYNC;
  c.pin_href = CAM_PIN_HREF;
  c.pin_pclk = CAM_PIN_PCLK;
  c.xclk_freq_hz = 20000000;
  c.ledc_timer = LEDC_TIMER_0;
  c.ledc_channel = LEDC_CHANNEL_0;
  c.pixel_format = PIXFORMAT_JPEG;
  // The driver sizes its JPEG buffers from the init frame size: init at the largest
  // size so a later "set" to a bigger frame size cannot overflow them (FB-OVF).
  c.frame_size = FRAMESIZE_UXGA;
  c.jpeg_quality = s.jpeg_quality;
  c.fb_count = 2;
  c.fb_location = CAMERA_FB_IN_PSRAM;
  c.grab_mode = CAMERA_GRAB_LATEST;
  esp_err_t err = esp_camera_init(&c);
  if (err != ESP_OK) {
    log_e("esp_camera_init failed: 0x%x", static_cast<unsigned>(err));
    return false;
  }
  std::string e;
  if (!apply(s, &e)) {
    log_e("camera settings: %s", e.c_str());
    return false;
  }
  return true;
}

void EspCamera::discard(int n) {
  for (int i = 0; i < n; ++i) {
    camera_fb_t* fb = esp_camera_fb_get();
    if (fb != nullptr) esp_camera_fb_return(fb);
  }
}

bool EspCamera::capture(camlink::Bytes* out) {
  camera_fb_t* fb = esp_camera_fb_get();
  if (fb == nullptr) {
    ++failures_;
    return false;
  }
  bool ok = fb->format == PIXFORMAT_JPEG && fb->len > 0 && out->assign(fb->buf, fb->len);
  esp_camera_fb_return(fb);  // give the buffer back before anything slow happens
  failures_ = ok ? 0 : failures_ + 1;
  return ok;
}

bool EspCamera::apply(const camlink::CameraSettings& s, std::string* err) {
  sensor_t* sn = esp_camera_sensor_get();
  if (sn == nullptr) {
    *err = "no sensor";
    return false;
  }
  if (sn->set_framesize(sn, to_esp(s.frame_size)) != 0) {
    *err = "set_framesize failed";
    return false;
  }
  if (sn->set_quality(sn, s.jpeg_quality) != 0) {
    *err = "set_quality failed";
    return false;
  }
  discard(CAM_DISCARD_FRAMES);  // let exposure and the new size settle
  return true;
}

}  // namespace esp
