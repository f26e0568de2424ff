#include "camlink/command.h"

#include <vector>

#include "camlink/json.h"

namespace camlink {
namespace {

struct SizeName {
  FrameSize size;
  const char* name;
};

const SizeName kSizes[] = {
    {FrameSize::kQQVGA, "QQVGA"}, {FrameSize::kQCIF, "QCIF"}, {FrameSize::kHQVGA, "HQVGA"},
    {FrameSize::k240X240, "240X240"}, {FrameSize::kQVGA, "QVGA"}, {FrameSize::kCIF, "CIF"},
    {FrameSize::kHVGA, "HVGA"}, {FrameSize::kVGA, "VGA"}, {FrameSize::kSVGA, "SVGA"},
    {FrameSize::kXGA, "XGA"}, {FrameSize::kHD, "HD"}, {FrameSize::kSXGA, "SXGA"},
    {FrameSize::kUXGA, "UXGA"},
};

// Keep user-supplied text in error messages short and printable.
std::string clip(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (out.size() >= 24) {
      out += "...";
      break;
    }
    out += (c >= 0x20 && c < 0x7F) ? c : '?';
  }
  return out;
}

bool set_err(std::string* err, const std::string& msg) {
  if (err != nullptr) *err = msg;
  return false;
}

}  // namespace

const char* frame_size_name(FrameSize f) {
  for (const auto& s : kSizes)
    if (s.size == f) return s.name;
  return "?";
}

bool frame_size_from_name(const std::string& name, FrameSize* out) {
  for (const auto& s : kSizes) {
    if (name == s.name) {
      if (out != nullptr) *out = s.size;
      return true;
    }
  }
  return false;
}

enum TuningField : uint16_t {
  kVflip = 1, kHmirror = 2, kAec = 4, kAecValue = 8, kAgc = 16, kAgcGain = 32, kAwb = 64,
  kWbMode = 128,
};

CameraSettings Command::applied_to(const CameraSettings& s) const {
  CameraSettings r = s;
  if (has_frame_size) r.frame_size = frame_size;
  if (has_jpeg_quality) r.jpeg_quality = jpeg_quality;
  if (has_interval_ms) r.interval_ms = interval_ms;
  if (tuning_mask & kVflip) r.tuning.vflip = tuning.vflip;
  if (tuning_mask & kHmirror) r.tuning.hmirror = tuning.hmirror;
  if (tuning_mask & kAec) r.tuning.aec = tuning.aec;
  if (tuning_mask & kAecValue) r.tuning.aec_value = tuning.aec_value;
  if (tuning_mask & kAgc) r.tuning.agc = tuning.agc;
  if (tuning_mask & kAgcGain) r.tuning.agc_gain = tuning.agc_gain;
  if (tuning_mask & kAwb) r.tuning.awb = tuning.awb;
  if (tuning_mask & kWbMode) r.tuning.wb_mode = tuning.wb_mode;
  return r;
}

int min_jpeg_quality(FrameSize f, FrameSize buffer_size) {
  if (f >= FrameSize::kXGA || f >= buffer_size) return kMinJpegQualityLarge;
  return kMinJpegQuality;
}

bool check_settings(const CameraSettings& s, FrameSize max_size, std::string* err) {
  if (s.frame_size > max_size)
    return set_err(err, std::string("frame_size above ") + frame_size_name(max_size) +
                            " (frame buffers / sensor)");
  int minq = min_jpeg_quality(s.frame_size, max_size);
  if (s.jpeg_quality < minq)
    return set_err(err, "jpeg_quality below " + std::to_string(minq) + " at " +
                            frame_size_name(s.frame_size));
  return true;
}

namespace {

int hex_nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool parse_bool_field(const JsonMember& m, bool* out) {
  if (m.value.type == JsonValue::Type::kBool) {
    *out = m.value.b;
    return true;
  }
  if (m.value.type == JsonValue::Type::kInt && (m.value.i == 0 || m.value.i == 1)) {
    *out = m.value.i == 1;
    return true;
  }
  return false;
}

bool parse_int_field(const JsonMember& m, int64_t lo, int64_t hi, int64_t* out) {
  if (m.value.type != JsonValue::Type::kInt || m.value.i < lo || m.value.i > hi) return false;
  *out = m.value.i;
  return true;
}

// One tuning member; returns 0 = not a tuning key, 1 = ok, -1 = bad value (err set).
int parse_tuning(const JsonMember& m, Command* c, std::string* err) {
  bool b = false;
  int64_t v = 0;
  const std::string& k = m.key;
  if (k == "vflip" || k == "hmirror" || k == "aec" || k == "agc" || k == "awb") {
    if (!parse_bool_field(m, &b)) {
      set_err(err, k + " must be true or false");
      return -1;
    }
    if (k == "vflip") { c->tuning.vflip = b; c->tuning_mask |= kVflip; }
    if (k == "hmirror") { c->tuning.hmirror = b; c->tuning_mask |= kHmirror; }
    if (k == "aec") { c->tuning.aec = b; c->tuning_mask |= kAec; }
    if (k == "agc") { c->tuning.agc = b; c->tuning_mask |= kAgc; }
    if (k == "awb") { c->tuning.awb = b; c->tuning_mask |= kAwb; }
    return 1;
  }
  if (k == "aec_value") {
    if (!parse_int_field(m, 0, 1200, &v)) { set_err(err, "aec_value must be an integer 0..1200"); return -1; }
    c->tuning.aec_value = static_cast<uint16_t>(v);
    c->tuning_mask |= kAecValue;
    return 1;
  }
  if (k == "agc_gain") {
    if (!parse_int_field(m, 0, 30, &v)) { set_err(err, "agc_gain must be an integer 0..30"); return -1; }
    c->tuning.agc_gain = static_cast<uint8_t>(v);
    c->tuning_mask |= kAgcGain;
    return 1;
  }
  if (k == "wb_mode") {
    if (!parse_int_field(m, 0, 4, &v)) { set_err(err, "wb_mode must be an integer 0..4"); return -1; }
    c->tuning.wb_mode = static_cast<uint8_t>(v);
    c->tuning_mask |= kWbMode;
    return 1;
  }
  return 0;
}

}  // namespace

bool parse_command(const uint8_t* payload, size_t len, Command* out, std::string* err) {
  Command c;
  std::vector<JsonMember> members;
  const char* jerr = nullptr;
  if (!parse_flat_object(reinterpret_cast<const char*>(payload), len, members, &jerr))
    return set_err(err, std::string("bad json: ") + (jerr != nullptr ? jerr : "?"));

  const JsonMember* cmd = nullptr;
  for (const auto& m : members)
    if (m.key == "cmd") cmd = &m;
  if (cmd == nullptr) return set_err(err, "missing cmd");
  if (cmd->value.type != JsonValue::Type::kString) return set_err(err, "cmd must be a string");

  const std::string& name = cmd->value.s;
  if (name == "reboot" || name == "status") {
    c.type = name == "reboot" ? CmdType::kReboot : CmdType::kStatus;
    for (const auto& m : members)
      if (m.key != "cmd") return set_err(err, "unknown field: " + clip(m.key));
  } else if (name == "set") {
    c.type = CmdType::kSet;
    for (const auto& m : members) {
      if (m.key == "cmd") continue;
      if (m.key == "frame_size") {
        if (m.value.type != JsonValue::Type::kString || !frame_size_from_name(m.value.s, &c.frame_size))
          return set_err(err, "bad frame_size");
        c.has_frame_size = true;
      } else if (m.key == "jpeg_quality") {
        if (m.value.type != JsonValue::Type::kInt || m.value.i < kMinJpegQuality ||
            m.value.i > kMaxJpegQuality)
          return set_err(err, "jpeg_quality must be an integer 4..63");
        c.jpeg_quality = static_cast<uint8_t>(m.value.i);
        c.has_jpeg_quality = true;
      } else if (m.key == "interval_ms") {
        if (m.value.type != JsonValue::Type::kInt || m.value.i < kMinIntervalMs ||
            m.value.i > kMaxIntervalMs)
          return set_err(err, "interval_ms must be an integer 100..86400000");
        c.interval_ms = static_cast<uint32_t>(m.value.i);
        c.has_interval_ms = true;
      } else {
        int t = parse_tuning(m, &c, err);
        if (t < 0) return false;
        if (t == 0) return set_err(err, "unknown field: " + clip(m.key));
      }
    }
    if (!c.has_frame_size && !c.has_jpeg_quality && !c.has_interval_ms && c.tuning_mask == 0)
      return set_err(err, "set without settings");
  } else if (name == "ota") {
    c.type = CmdType::kOta;
    bool has_url = false, has_sha = false, has_size = false;
    for (const auto& m : members) {
      if (m.key == "cmd") continue;
      if (m.key == "url") {
        if (m.value.type != JsonValue::Type::kString || m.value.s.compare(0, 8, "https://") != 0 ||
            m.value.s.size() <= 8 || m.value.s.size() > kMaxOtaUrl)
          return set_err(err, "url must be an https:// URL");
        c.ota_url = m.value.s;
        has_url = true;
      } else if (m.key == "sha256") {
        if (m.value.type != JsonValue::Type::kString || m.value.s.size() != 64)
          return set_err(err, "sha256 must be 64 hex digits");
        for (size_t i = 0; i < 32; ++i) {
          int hi = hex_nibble(m.value.s[2 * i]), lo = hex_nibble(m.value.s[2 * i + 1]);
          if (hi < 0 || lo < 0) return set_err(err, "sha256 must be 64 hex digits");
          c.ota_sha256[i] = static_cast<uint8_t>(hi * 16 + lo);
        }
        has_sha = true;
      } else if (m.key == "size") {
        if (m.value.type != JsonValue::Type::kInt || m.value.i < 1 || m.value.i > 16 * 1024 * 1024)
          return set_err(err, "size must be an integer 1..16777216");
        c.ota_size = static_cast<uint32_t>(m.value.i);
        has_size = true;
      } else {
        return set_err(err, "unknown field: " + clip(m.key));
      }
    }
    if (!has_url || !has_sha || !has_size) return set_err(err, "ota needs url, sha256 and size");
  } else {
    return set_err(err, "unknown cmd: " + clip(name));
  }
  if (out != nullptr) *out = c;
  return true;
}

}  // namespace camlink
