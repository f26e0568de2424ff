// Commands on cam/<id>/cmd, parsed strictly:
//   {"cmd":"set","frame_size":"SVGA","jpeg_quality":12,"interval_ms":1000}
//   {"cmd":"reboot"}
//   {"cmd":"status"}   (publish the status now)
// A "set" is all-or-nothing: any unknown field or out-of-range value rejects the
// whole command, and the error is reported in the status (cmd_errors, last_cmd_error).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace camlink {

/// OV2640 frame sizes, by their esp_camera names (FRAMESIZE_<name>).
enum class FrameSize : uint8_t {
  kQQVGA,   // 160x120
  kQCIF,    // 176x144
  kHQVGA,   // 240x176
  k240X240, // 240x240
  kQVGA,    // 320x240
  kCIF,     // 400x296
  kHVGA,    // 480x320
  kVGA,     // 640x480
  kSVGA,    // 800x600
  kXGA,     // 1024x768
  kHD,      // 1280x720
  kSXGA,    // 1280x1024
  kUXGA,    // 1600x1200
};

const char* frame_size_name(FrameSize f);
bool frame_size_from_name(const std::string& name, FrameSize* out);

constexpr int kMinJpegQuality = 4;     // esp_camera: 0..63, lower = better; < 4 overflows buffers
constexpr int kMaxJpegQuality = 63;
constexpr int64_t kMinIntervalMs = 100;
constexpr int64_t kMaxIntervalMs = 86400000;  // one day

struct CameraSettings {
  FrameSize frame_size = FrameSize::kSVGA;
  uint8_t jpeg_quality = 12;
  uint32_t interval_ms = 1000;
};

enum class CmdType : uint8_t { kNone, kSet, kReboot, kStatus };

struct Command {
  CmdType type = CmdType::kNone;
  bool has_frame_size = false;
  bool has_jpeg_quality = false;
  bool has_interval_ms = false;
  FrameSize frame_size = FrameSize::kSVGA;
  uint8_t jpeg_quality = 0;
  uint32_t interval_ms = 0;

  /// Apply a "set" onto settings (fields not present are kept).
  CameraSettings applied_to(const CameraSettings& s) const;
};

/// Parse a command payload. On failure returns false and sets err (short, ASCII).
bool parse_command(const uint8_t* payload, size_t len, Command* out, std::string* err);

}  // namespace camlink
