#include "camlink/camera_plan.h"

namespace camlink {
namespace {
constexpr uint32_t kSalt = 0x5EED1234u;
uint32_t identity_check(const SleepIdentity& s) {
  return s.boot_id ^ s.next_seq ^ s.wakes ^ s.magic ^ kSalt;
}
}  // namespace

void frame_size_dims(FrameSize f, uint16_t* w, uint16_t* h) {
  struct D { uint16_t w, h; };
  static const D dims[] = {{160, 120}, {176, 144}, {240, 176}, {240, 240}, {320, 240},
                           {400, 296}, {480, 320}, {640, 480}, {800, 600}, {1024, 768},
                           {1280, 720}, {1280, 1024}, {1600, 1200}};
  size_t i = static_cast<size_t>(f);
  if (i >= sizeof(dims) / sizeof(dims[0])) i = 8;
  *w = dims[i].w;
  *h = dims[i].h;
}

size_t jpeg_buffer_bytes(FrameSize f) {
  uint16_t w = 0, h = 0;
  frame_size_dims(f, &w, &h);
  return static_cast<size_t>(w) * h / 5;
}

CameraPlan plan_camera(size_t psram_bytes, FrameSize sensor_max, size_t queue_max) {
  CameraPlan p;
  if (psram_bytes > 0) {
    p.init_size = sensor_max;
    p.fb_count = 2;
    p.fb_in_psram = true;
    p.grab_latest = true;
    size_t fbs = 2 * jpeg_buffer_bytes(sensor_max);
    size_t left = psram_bytes > fbs ? psram_bytes - fbs : 0;
    p.queue_bytes = queue_max < left / 2 ? queue_max : left / 2;
    p.name = "psram";
    return p;
  }
  p.init_size = sensor_max < FrameSize::kVGA ? sensor_max : FrameSize::kVGA;
  p.fb_count = 1;
  p.fb_in_psram = false;
  p.grab_latest = false;  // one buffer: CAMERA_GRAB_WHEN_EMPTY
  p.queue_bytes = 64u * 1024u;
  p.name = "dram";
  return p;
}

CameraPlan fallback_plan() {
  CameraPlan p;
  p.init_size = FrameSize::kQVGA;
  p.fb_count = 1;
  p.fb_in_psram = false;
  p.grab_latest = false;
  p.queue_bytes = 32u * 1024u;
  p.name = "fallback";
  return p;
}

SensorInfo sensor_info(uint16_t pid) {
  switch (pid) {
    case 0x26: return {"OV2640", FrameSize::kUXGA};
    case 0x3660: return {"OV3660", FrameSize::kUXGA};  // QXGA, capped at our range
    case 0x5640: return {"OV5640", FrameSize::kUXGA};  // QSXGA, capped
    case 0x77: return {"OV7725", FrameSize::kVGA};
    case 0x7670: return {"OV7670", FrameSize::kVGA};
    case 0x9b: return {"GC2145", FrameSize::kUXGA};
    default: return {"unknown", FrameSize::kSVGA};
  }
}

BringUpResult bring_up_camera(CameraDriver& d, const CameraPlan& plan) {
  BringUpResult r;
  const CameraPlan attempts[] = {plan, plan, fallback_plan()};
  for (const CameraPlan& p : attempts) {
    if (r.attempts > 0) {
      d.deinit();
      d.power_cycle();
    }
    ++r.attempts;
    std::string err;
    if (d.init(p, &err)) {
      r.ok = true;
      r.plan = p;
      return r;
    }
    r.last_error = err;
  }
  d.deinit();
  return r;
}

CameraHealth::Action CameraHealth::on_capture(bool ok) {
  if (ok) {
    failures_ = 0;
    reinits_in_row_ = 0;
    return Action::kNone;
  }
  if (++failures_ < limit_) return Action::kNone;
  failures_ = 0;
  if (reinits_in_row_ >= max_reinits_) return Action::kReboot;
  return Action::kReinit;
}

void CameraHealth::on_reinit_done(bool ok) {
  ++reinits_in_row_;
  ++reinits_total_;
  if (!ok) failures_ = limit_ - 1;  // the next failure decides again at once
}

void Cadence::advance(uint32_t interval_ms, uint64_t now_after) {
  next_ms_ += interval_ms;
  if (next_ms_ <= now_after) next_ms_ = now_after + interval_ms;
}

void resume_identity(SleepIdentity* rtc, bool woke_from_sleep, uint32_t fresh_boot_id,
                     uint32_t* boot_id, uint32_t* first_seq) {
  bool valid = rtc->magic == kSleepMagic && rtc->check == identity_check(*rtc);
  if (woke_from_sleep && valid) {
    ++rtc->wakes;
    *boot_id = rtc->boot_id;
    *first_seq = rtc->next_seq;
  } else {
    rtc->magic = kSleepMagic;
    rtc->boot_id = fresh_boot_id;
    rtc->next_seq = 0;
    rtc->wakes = 0;
    *boot_id = fresh_boot_id;
    *first_seq = 0;
  }
  rtc->check = identity_check(*rtc);
}

void save_identity(SleepIdentity* rtc, uint32_t boot_id, uint32_t next_seq) {
  rtc->magic = kSleepMagic;
  rtc->boot_id = boot_id;
  rtc->next_seq = next_seq;
  rtc->check = identity_check(*rtc);
}

}  // namespace camlink
