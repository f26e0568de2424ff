// Device status JSON (retained on cam/<id>/status), wire contract v1 fields
// plus extras (the contract allows extra fields).
#pragma once

#include <cstdint>
#include <string>

#include "camlink/command.h"

namespace camlink {

struct StatusInfo {
  const char* state = "online";
  const char* fw = "";
  uint32_t boot_id = 0;
  uint64_t uptime_s = 0;
  int rssi = 0;
  uint32_t heap_free = 0;
  uint32_t psram_free = 0;
  uint32_t queue = 0;          // frames waiting (not yet fully acknowledged)
  uint64_t queue_bytes = 0;
  uint64_t frames_sent = 0;    // frames whose every chunk was acknowledged
  uint64_t frames_dropped = 0; // dropped by the offline queue (oldest first)
  uint64_t frames_invalid = 0; // captures that failed the SOI/EOI check
  uint64_t capture_errors = 0;
  const char* reset_reason = "unknown";
  CameraSettings camera;
  uint64_t cmd_errors = 0;
  std::string last_cmd_error;  // "" = none
  bool clock_synced = false;
  uint64_t reconnects = 0;
  const char* sensor = "";     // "" = not reported
  uint32_t camera_reinits = 0;
  std::string ota;             // "" = not reported
};

std::string build_status_json(const StatusInfo& s);

/// The retained last-will / clean-shutdown payload.
inline const char* offline_status_json() { return "{\"state\":\"offline\"}"; }

}  // namespace camlink
