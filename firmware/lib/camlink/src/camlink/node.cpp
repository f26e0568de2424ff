#include "camlink/node.h"

#include "camlink/crc32.h"
#include "camlink/jpeg.h"

namespace camlink {

bool valid_device_id(const std::string& id) {
  if (id.empty() || id.size() > 32) return false;
  for (char c : id) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

CamNode::CamNode(NodeConfig cfg, Clock& clock, MqttPublisher& mqtt, Camera& camera,
                 SystemInfo& sys)
    : cfg_(std::move(cfg)), clock_(clock), mqtt_(mqtt), camera_(camera), sys_(sys),
      frame_topic_(cfg_.prefix + "/" + cfg_.device_id + "/frame"),
      status_topic_(cfg_.prefix + "/" + cfg_.device_id + "/status"),
      cmd_topic_(cfg_.prefix + "/" + cfg_.device_id + "/cmd"),
      queue_(cfg_.queue_bytes, cfg_.queue_frames),
      uplink_(mqtt, clock, queue_, frame_topic_, cfg_.boot_id, cfg_.uplink) {
  next_capture_ms_ = clock_.mono_ms();
  next_seq_ = cfg_.first_seq;
}

void CamNode::on_connected() {
  if (ever_connected_) ++stats_.reconnects;
  ever_connected_ = true;
  connected_ = true;
  uplink_.on_connected();
  status_due_ = true;  // retained "online" replaces the last will's "offline"
}

void CamNode::on_disconnected() {
  connected_ = false;
  uplink_.on_disconnected();
}

void CamNode::on_published(int msg_id) { uplink_.on_published(msg_id); }

void CamNode::on_message(const char* topic, const uint8_t* payload, size_t len) {
  if (topic == nullptr || cmd_topic_ != topic) return;
  handle_command(payload, len);
}

void CamNode::handle_command(const uint8_t* payload, size_t len) {
  Command c;
  std::string err;
  if (!parse_command(payload, len, &c, &err)) {
    ++stats_.cmd_errors;
    stats_.last_cmd_error = err;
    status_due_ = true;
    return;
  }
  switch (c.type) {
    case CmdType::kSet: apply_settings(c.applied_to(cfg_.camera)); break;
    case CmdType::kReboot:
      ++stats_.cmd_ok;
      reboot_requested_ = true;
      break;
    case CmdType::kStatus: ++stats_.cmd_ok; break;
    case CmdType::kOta: {
      std::string why;
      if (ota_ == nullptr) {
        why = "not supported";
      } else if (ota_->request(c.ota_url, c.ota_sha256, c.ota_size, &why)) {
        ++stats_.cmd_ok;
        break;
      }
      ++stats_.cmd_errors;
      stats_.last_cmd_error = "ota: " + why;
      break;
    }
    case CmdType::kNone: break;
  }
  status_due_ = true;
}

void CamNode::apply_settings(const CameraSettings& s) {
  std::string err;
  if (!check_settings(s, cfg_.max_frame_size, &err)) {
    ++stats_.cmd_errors;
    stats_.last_cmd_error = err;
    return;
  }
  bool camera_changed = s.frame_size != cfg_.camera.frame_size ||
                        s.jpeg_quality != cfg_.camera.jpeg_quality ||
                        s.tuning != cfg_.camera.tuning;
  if (camera_changed && !camera_.apply(s, &err)) {
    ++stats_.cmd_errors;
    stats_.last_cmd_error = "camera: " + err;
    return;
  }
  if (s.interval_ms != cfg_.camera.interval_ms) {
    uint64_t now = clock_.mono_ms();
    next_capture_ms_ = now + s.interval_ms;
  }
  cfg_.camera = s;
  ++stats_.cmd_ok;
}

bool CamNode::captures_finished() const {
  return cfg_.capture_limit != 0 && stats_.frames_captured + stats_.capture_errors >=
                                        cfg_.capture_limit;
}

bool CamNode::done() const { return captures_finished() && uplink_.idle(); }

uint64_t CamNode::ms_until_next_capture() {
  if (captures_finished()) return UINT64_MAX;
  uint64_t now = clock_.mono_ms();
  return next_capture_ms_ > now ? next_capture_ms_ - now : 0;
}

bool CamNode::submit(Bytes&& jpeg, uint64_t mono_ms) {
  size_t n = jpeg_trimmed_len(jpeg.data(), jpeg.size());
  if (n == 0) {
    ++stats_.frames_invalid;
    return false;
  }
  jpeg.truncate(n);
  uint32_t count = chunk_count_for(n, uplink_.config().chunk_data);
  if (count == 0) {
    ++stats_.frames_too_large;
    return false;
  }
  QueuedFrame f;
  f.seq = next_seq_++;
  f.mono_ms = mono_ms;
  uint64_t wall = 0;
  if (clock_.wall_ms(&wall)) {
    f.capture_ms = wall;
    f.flags = kFlagClockSynced;
  }
  f.crc = crc32(jpeg.data(), n);
  f.chunk_count = static_cast<uint16_t>(count);
  f.chunk_state.assign(count, QueuedFrame::kUnsent);
  f.data = std::move(jpeg);
  // A dropped frame's publishes keep their window slots until their PUBACK (or a
  // reconnect): the MQTT library still holds and will deliver them. Freeing the slots
  // let a silent outage hand every captured frame to the library's unbounded outbox.
  PushResult r = queue_.push(std::move(f));
  return r.accepted;
}

bool CamNode::submit_capture(Bytes&& jpeg, uint64_t mono_ms) {
  ++stats_.frames_captured;
  return submit(std::move(jpeg), mono_ms);
}

void CamNode::capture_now() {
  uint64_t now = clock_.mono_ms();
  Bytes jpeg;
  if (!camera_.capture(&jpeg)) {
    ++stats_.capture_errors;
    return;
  }
  ++stats_.frames_captured;
  submit(std::move(jpeg), now);
}

std::string CamNode::status_json(const char* state) {
  StatusInfo s;
  s.state = state;
  s.fw = cfg_.fw.c_str();
  s.boot_id = cfg_.boot_id;
  s.uptime_s = clock_.mono_ms() / 1000;
  s.rssi = sys_.rssi();
  s.heap_free = sys_.heap_free();
  s.psram_free = sys_.psram_free();
  s.queue = static_cast<uint32_t>(queue_.size());
  s.queue_bytes = queue_.bytes();
  s.frames_sent = uplink_.stats().frames_sent;
  s.frames_dropped = queue_.dropped();
  s.frames_invalid = stats_.frames_invalid;
  s.capture_errors = stats_.capture_errors;
  s.reset_reason = cfg_.reset_reason.c_str();
  s.camera = cfg_.camera;
  s.cmd_errors = stats_.cmd_errors;
  s.last_cmd_error = stats_.last_cmd_error;
  uint64_t wall = 0;
  s.clock_synced = clock_.wall_ms(&wall);
  s.reconnects = stats_.reconnects;
  s.sensor = sys_.sensor();
  s.camera_reinits = sys_.camera_reinits();
  if (ota_ != nullptr) s.ota = ota_->state();
  return build_status_json(s);
}

int CamNode::publish_status() {
  if (!connected_) return -1;
  std::string js = status_json("online");
  int mid = mqtt_.publish(status_topic_.c_str(), reinterpret_cast<const uint8_t*>(js.data()),
                          js.size(), 1, true);
  if (mid >= 0) {
    ++stats_.status_published;
    status_due_ = false;
    next_status_ms_ = clock_.mono_ms() + cfg_.status_period_ms;
  }
  return mid;
}

void CamNode::tick() {
  uint64_t now = clock_.mono_ms();
  if (cfg_.capture_in_tick && !captures_finished() && now >= next_capture_ms_) {
    capture_now();
    // Keep the cadence, but never try to catch up with a burst after a stall.
    next_capture_ms_ += cfg_.camera.interval_ms;
    uint64_t after = clock_.mono_ms();
    if (next_capture_ms_ <= after) next_capture_ms_ = after + cfg_.camera.interval_ms;
  }
  if (connected_ && (status_due_ || now >= next_status_ms_)) publish_status();
  uplink_.poll();
}

}  // namespace camlink
