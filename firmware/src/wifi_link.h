// Wi-Fi station with our own reconnect schedule (jittered exponential backoff)
// instead of the driver's auto-reconnect, so many cameras do not retry in step.
#pragma once

#include <cstdint>

#include "camlink/backoff.h"

namespace esp {

class WifiLink {
 public:
  WifiLink(camlink::Rng& rng, uint32_t base_ms, uint32_t max_ms) : backoff_(base_ms, max_ms, rng) {}
  void begin(const char* ssid, const char* password, const char* hostname);
  void loop(uint64_t now_ms);
  bool up() const { return up_; }
  uint32_t reconnects() const { return reconnects_; }

 private:
  camlink::Backoff backoff_;
  const char* ssid_ = "";
  const char* password_ = "";
  bool up_ = false;
  bool ever_up_ = false;
  uint64_t next_try_ms_ = 0;
  uint32_t reconnects_ = 0;
};

}  // namespace esp
