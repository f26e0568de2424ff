// Wi-Fi station with our own reconnect schedule (jittered exponential backoff)
// instead of the driver's auto-reconnect, so many cameras do not retry in step.
#pragma once

#include <cstdint>

#include "camlink/backoff.h"

namespace esp {

class WifiLink {
 public:
  /// min_attempt_ms: each attempt (association, WPA, DHCP) gets at least this long
  /// before disconnect + begin again (review defect 10: 2-4 s could cut DHCP).
  WifiLink(camlink::Rng& rng, uint32_t base_ms, uint32_t max_ms, uint32_t min_attempt_ms)
      : backoff_(base_ms, max_ms, rng), min_attempt_ms_(min_attempt_ms) {}
  void begin(const char* ssid, const char* password, const char* hostname);
  void loop(uint64_t now_ms);
  bool up() const { return up_; }
  uint32_t reconnects() const { return reconnects_; }

 private:
  uint32_t next_window_ms();
  camlink::Backoff backoff_;
  uint32_t min_attempt_ms_;
  const char* ssid_ = "";
  const char* password_ = "";
  bool up_ = false;
  bool ever_up_ = false;
  uint64_t next_try_ms_ = 0;
  uint32_t reconnects_ = 0;
};

}  // namespace esp
