#include "camlink/status.h"

#include "camlink/json.h"

namespace camlink {

std::string build_status_json(const StatusInfo& s) {
  JsonWriter w;
  w.str("state", s.state)
      .str("fw", s.fw)
      .u64("boot_id", s.boot_id)
      .u64("uptime_s", s.uptime_s)
      .i64("rssi", s.rssi)
      .u64("heap_free", s.heap_free)
      .u64("psram_free", s.psram_free)
      .u64("queue", s.queue)
      .u64("frames_sent", s.frames_sent)
      .u64("frames_dropped", s.frames_dropped)
      .str("reset_reason", s.reset_reason)
      .str("frame_size", frame_size_name(s.camera.frame_size))
      .u64("jpeg_quality", s.camera.jpeg_quality)
      .u64("interval_ms", s.camera.interval_ms)
      .u64("queue_bytes", s.queue_bytes)
      .u64("frames_invalid", s.frames_invalid)
      .u64("capture_errors", s.capture_errors)
      .u64("cmd_errors", s.cmd_errors);
  if (s.last_cmd_error.empty()) {
    w.null("last_cmd_error");
  } else {
    w.str("last_cmd_error", s.last_cmd_error);
  }
  w.boolean("clock_synced", s.clock_synced).u64("reconnects", s.reconnects);
  const Tuning& t = s.camera.tuning;
  w.boolean("vflip", t.vflip)
      .boolean("hmirror", t.hmirror)
      .boolean("aec", t.aec)
      .u64("aec_value", t.aec_value)
      .boolean("agc", t.agc)
      .u64("agc_gain", t.agc_gain)
      .boolean("awb", t.awb)
      .u64("wb_mode", t.wb_mode);
  if (s.sensor != nullptr && s.sensor[0] != '\0') {
    w.str("sensor", s.sensor).u64("camera_reinits", s.camera_reinits);
  }
  if (!s.ota.empty()) w.str("ota", s.ota.c_str());
  return w.finish();
}

}  // namespace camlink
