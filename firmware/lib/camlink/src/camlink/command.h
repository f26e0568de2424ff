// Commands on cam/<id>/cmd, parsed strictly:
//   {"cmd":"set","frame_size":"SVGA","jpeg_quality":12,"interval_ms":1000}
//   {"cmd":"reboot"}
//   {"cmd":"status"}   (publish the status now)
//   {"cmd":"set","vflip":true,"hmirror":false,"aec":false,"aec_value":300,
//    "agc":false,"agc_gain":5,"awb":true,"wb_mode":0}        (sensor tuning)
//   {"cmd":"ota","url":"https://...","sha256":"<64 hex>","size":1234567}
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
constexpr int kMinJpegQualityLarge = 6;  // at XGA and above, and at the buffer-sizing size (ESPHome: 6)
constexpr int kMaxJpegQuality = 63;
constexpr int64_t kMinIntervalMs = 100;
constexpr int64_t kMaxIntervalMs = 86400000;  // one day

/// Sensor tuning (esp32-camera sensor_t setters). Defaults = the driver's defaults.
struct Tuning {
  bool vflip = false;
  bool hmirror = false;
  bool aec = true;         // auto exposure
  uint16_t aec_value = 300;  // manual exposure 0..1200 (when aec is off)
  bool agc = true;         // auto gain
  uint8_t agc_gain = 0;    // manual gain 0..30 (when agc is off)
  bool awb = true;         // auto white balance
  uint8_t wb_mode = 0;     // 0 auto, 1 sunny, 2 cloudy, 3 office, 4 home
  bool operator==(const Tuning& o) const {
    return vflip == o.vflip && hmirror == o.hmirror && aec == o.aec &&
           aec_value == o.aec_value && agc == o.agc && agc_gain == o.agc_gain &&
           awb == o.awb && wb_mode == o.wb_mode;
  }
  bool operator!=(const Tuning& o) const { return !(*this == o); }
};

struct CameraSettings {
  FrameSize frame_size = FrameSize::kSVGA;
  uint8_t jpeg_quality = 12;
  uint32_t interval_ms = 1000;
  Tuning tuning;
};

/// Smallest jpeg_quality allowed at frame size f when the driver's JPEG buffers were
/// sized for `buffer_size` (the init size): 6 at XGA and above and at buffer_size itself
/// (a quality-4 frame can outgrow a buffer of w*h/5 bytes), else 4.
int min_jpeg_quality(FrameSize f, FrameSize buffer_size);

/// Whole-settings check after a "set" (fields of one command interact): frame size
/// within what the buffers (PSRAM) and the sensor allow, quality not below the
/// minimum at that size. False + err (short, ASCII) when not allowed.
bool check_settings(const CameraSettings& s, FrameSize max_size, std::string* err);

constexpr size_t kMaxOtaUrl = 128;  // a JSON string of the command reader

enum class CmdType : uint8_t { kNone, kSet, kReboot, kStatus, kOta };

struct Command {
  CmdType type = CmdType::kNone;
  bool has_frame_size = false;
  bool has_jpeg_quality = false;
  bool has_interval_ms = false;
  FrameSize frame_size = FrameSize::kSVGA;
  uint8_t jpeg_quality = 0;
  uint32_t interval_ms = 0;
  // Tuning: each field optional.
  uint16_t tuning_mask = 0;  // bit per TuningField
  Tuning tuning;
  // "ota"
  std::string ota_url;
  uint8_t ota_sha256[32] = {};
  uint32_t ota_size = 0;

  /// Apply a "set" onto settings (fields not present are kept).
  CameraSettings applied_to(const CameraSettings& s) const;
};

/// Parse a command payload. On failure returns false and sets err (short, ASCII).
bool parse_command(const uint8_t* payload, size_t len, Command* out, std::string* err);

}  // namespace camlink
