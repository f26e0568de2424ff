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

CameraSettings Command::applied_to(const CameraSettings& s) const {
  CameraSettings r = s;
  if (has_frame_size) r.frame_size = frame_size;
  if (has_jpeg_quality) r.jpeg_quality = jpeg_quality;
  if (has_interval_ms) r.interval_ms = interval_ms;
  return r;
}

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
        return set_err(err, "unknown field: " + clip(m.key));
      }
    }
    if (!c.has_frame_size && !c.has_jpeg_quality && !c.has_interval_ms)
      return set_err(err, "set without settings");
  } else {
    return set_err(err, "unknown cmd: " + clip(name));
  }
  if (out != nullptr) *out = c;
  return true;
}

}  // namespace camlink
