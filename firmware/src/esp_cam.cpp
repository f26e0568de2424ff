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

class Lock {
 public:
  explicit Lock(SemaphoreHandle_t s) : s_(s) { xSemaphoreTake(s_, portMAX_DELAY); }
  ~Lock() { xSemaphoreGive(s_); }
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;

 private:
  SemaphoreHandle_t s_;
};

}  // namespace

camlink::FrameSize EspCamera::max_frame_size() const {
  return sensor_.max_size < plan_.init_size ? sensor_.max_size : plan_.init_size;
}

void EspCamera::power_cycle() {
#if CAM_PIN_PWDN >= 0
  pinMode(CAM_PIN_PWDN, OUTPUT);
  digitalWrite(CAM_PIN_PWDN, HIGH);  // sensor off
  delay(200);
  digitalWrite(CAM_PIN_PWDN, LOW);   // on again, from its power-on state
  delay(200);
#endif
}

void EspCamera::power_down() {
  Lock l(lock_);
  deinit();
#if CAM_PIN_PWDN >= 0
  pinMode(CAM_PIN_PWDN, OUTPUT);
  digitalWrite(CAM_PIN_PWDN, HIGH);
#endif
}

void EspCamera::deinit() {
  if (initialised_) esp_camera_deinit();
  initialised_ = false;
}

bool EspCamera::init(const camlink::CameraPlan& plan, std::string* err) {
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
  // The driver sizes its JPEG buffers (w*h/5) from the init frame size: init at the
  // largest size the plan allows so a later "set" cannot overflow them (FB-OVF).
  c.frame_size = to_esp(plan.init_size);
  c.jpeg_quality = 12;
  c.fb_count = plan.fb_count;
  c.fb_location = plan.fb_in_psram ? CAMERA_FB_IN_PSRAM : CAMERA_FB_IN_DRAM;
  c.grab_mode = plan.grab_latest ? CAMERA_GRAB_LATEST : CAMERA_GRAB_WHEN_EMPTY;
  esp_err_t e = esp_camera_init(&c);
  if (e != ESP_OK) {
    *err = "esp_camera_init 0x" + std::to_string(static_cast<unsigned>(e));
    log_e("camera init (%s plan) failed: 0x%x", plan.name, static_cast<unsigned>(e));
    return false;
  }
  initialised_ = true;
  sensor_t* sn = esp_camera_sensor_get();
  sensor_ = camlink::sensor_info(sn != nullptr ? sn->id.PID : 0);
  log_i("camera: %s (pid 0x%x), plan %s, %u buffer(s)", sensor_.name,
        sn != nullptr ? static_cast<unsigned>(sn->id.PID) : 0u, plan.name,
        static_cast<unsigned>(plan.fb_count));
  return true;
}

bool EspCamera::begin(const camlink::CameraSettings& s, size_t queue_max) {
  if (lock_ == nullptr) lock_ = xSemaphoreCreateMutex();
  size_t psram = psramFound() ? ESP.getPsramSize() : 0;
  Lock l(lock_);
  camlink::BringUpResult r =
      camlink::bring_up_camera(*this, camlink::plan_camera(psram, camlink::FrameSize::kUXGA,
                                                           queue_max));
  if (!r.ok) return false;
  plan_ = r.plan;
  camlink::CameraSettings start = s;
  if (start.frame_size > max_frame_size()) start.frame_size = max_frame_size();
  int minq = camlink::min_jpeg_quality(start.frame_size, max_frame_size());
  if (start.jpeg_quality < minq) start.jpeg_quality = static_cast<uint8_t>(minq);
  std::string e;
  if (!apply_locked(start, &e)) {
    log_e("camera settings: %s", e.c_str());
    return false;
  }
  return true;
}

bool EspCamera::reinit() {
  Lock l(lock_);
  camlink::BringUpResult r = camlink::bring_up_camera(*this, plan_);
  if (!r.ok) return false;
  plan_ = r.plan;
  std::string e;
  return apply_locked(settings_, &e);
}

void EspCamera::discard(int n) {
  for (int i = 0; i < n; ++i) {
    camera_fb_t* fb = esp_camera_fb_get();
    if (fb != nullptr) esp_camera_fb_return(fb);
  }
}

bool EspCamera::capture(camlink::Bytes* out) {
  Lock l(lock_);
  if (!initialised_) return false;
  camera_fb_t* fb = esp_camera_fb_get();
  if (fb == nullptr) return false;
  bool ok = fb->format == PIXFORMAT_JPEG && fb->len > 0 && out->assign(fb->buf, fb->len);
  esp_camera_fb_return(fb);  // give the buffer back before anything slow happens
  return ok;
}

bool EspCamera::apply(const camlink::CameraSettings& s, std::string* err) {
  Lock l(lock_);
  return apply_locked(s, err);
}

bool EspCamera::apply_locked(const camlink::CameraSettings& s, std::string* err) {
  sensor_t* sn = esp_camera_sensor_get();
  if (sn == nullptr) {
    *err = "no sensor";
    return false;
  }
  const camlink::Tuning& t = s.tuning;
  struct Step {
    const char* what;
    int rc;
  };
  const Step steps[] = {
      {"set_framesize", sn->set_framesize(sn, to_esp(s.frame_size))},
      {"set_quality", sn->set_quality(sn, s.jpeg_quality)},
      {"set_vflip", sn->set_vflip(sn, t.vflip ? 1 : 0)},
      {"set_hmirror", sn->set_hmirror(sn, t.hmirror ? 1 : 0)},
      {"set_exposure_ctrl", sn->set_exposure_ctrl(sn, t.aec ? 1 : 0)},
      {"set_aec_value", t.aec ? 0 : sn->set_aec_value(sn, t.aec_value)},
      {"set_gain_ctrl", sn->set_gain_ctrl(sn, t.agc ? 1 : 0)},
      {"set_agc_gain", t.agc ? 0 : sn->set_agc_gain(sn, t.agc_gain)},
      {"set_whitebal", sn->set_whitebal(sn, t.awb ? 1 : 0)},
      {"set_wb_mode", sn->set_wb_mode(sn, t.wb_mode)},
  };
  for (const Step& st : steps) {
    if (st.rc != 0) {
      *err = std::string(st.what) + " failed";
      return false;
    }
  }
  settings_ = s;
  discard(CAM_DISCARD_FRAMES);  // let exposure and the new size settle
  return true;
}

}  // namespace esp
