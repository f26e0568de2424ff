// ESP32 implementations of the core's small platform interfaces: clock (esp_timer
// + SNTP), system info, hardware RNG, reset reason, PSRAM allocator, watchdog.
#pragma once

#include <cstdint>

#include "camlink/backoff.h"
#include "camlink/interfaces.h"

namespace esp {

class EspClock : public camlink::Clock {
 public:
  uint64_t mono_ms() override;
  bool wall_ms(uint64_t* out) override;
};

class EspSys : public camlink::SystemInfo {
 public:
  int rssi() override;
  uint32_t heap_free() override;
  uint32_t psram_free() override;
};

class EspRng : public camlink::Rng {
 public:
  uint32_t next_u32() override;
};

/// Start SNTP (UTC). The clock reports "synced" from the first successful sync.
void start_sntp(const char* server);
bool time_synced();

/// esp_reset_reason() as a short name: "poweron", "brownout", "task_wdt", ...
const char* reset_reason_name();

/// Route camlink frame buffers (the offline queue) to PSRAM. False without PSRAM.
bool use_psram_for_frames();

/// Task watchdog on the calling (loop) task: panic + reboot if not fed in time.
void watchdog_begin(uint32_t timeout_s);
void watchdog_feed();
/// Also watch the calling task (the capture task).
void watchdog_add_current_task();

}  // namespace esp
