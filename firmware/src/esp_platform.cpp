#include "esp_platform.h"

#include <Arduino.h>
#include <WiFi.h>
#include <sys/time.h>
#include <time.h>

#include "esp_heap_caps.h"
#include "esp_idf_version.h"
#include "esp_sntp.h"
#include "esp_system.h"
#include "esp_task_wdt.h"
#include "esp_timer.h"

#include "camlink/bytes.h"

namespace esp {
namespace {

volatile bool g_synced = false;

void on_time_sync(struct timeval*) { g_synced = true; }

void* psram_alloc(size_t n) { return heap_caps_malloc(n, MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT); }
void psram_free_fn(void* p) { heap_caps_free(p); }

}  // namespace

uint64_t EspClock::mono_ms() { return static_cast<uint64_t>(esp_timer_get_time() / 1000); }

bool EspClock::wall_ms(uint64_t* out) {
  if (!time_synced()) return false;
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  *out = static_cast<uint64_t>(tv.tv_sec) * 1000u + static_cast<uint64_t>(tv.tv_usec / 1000);
  return true;
}

int EspSys::rssi() { return WiFi.status() == WL_CONNECTED ? WiFi.RSSI() : 0; }
uint32_t EspSys::heap_free() {
  return static_cast<uint32_t>(heap_caps_get_free_size(MALLOC_CAP_INTERNAL));
}
uint32_t EspSys::psram_free() {
  return static_cast<uint32_t>(heap_caps_get_free_size(MALLOC_CAP_SPIRAM));
}

uint32_t EspRng::next_u32() { return esp_random(); }

void start_sntp(const char* server) {
  sntp_set_time_sync_notification_cb(on_time_sync);
  configTime(0, 0, server);  // UTC; Arduino wraps sntp_setservername + sntp_init
}

bool time_synced() {
  if (g_synced) return true;
  // A sync may have completed before the callback was registered.
  if (sntp_get_sync_status() == SNTP_SYNC_STATUS_COMPLETED) g_synced = true;
  return g_synced;
}

const char* reset_reason_name() {
  switch (esp_reset_reason()) {
    case ESP_RST_POWERON: return "poweron";
    case ESP_RST_EXT: return "external";
    case ESP_RST_SW: return "software";
    case ESP_RST_PANIC: return "panic";
    case ESP_RST_INT_WDT: return "int_wdt";
    case ESP_RST_TASK_WDT: return "task_wdt";
    case ESP_RST_WDT: return "wdt";
    case ESP_RST_DEEPSLEEP: return "deepsleep";
    case ESP_RST_BROWNOUT: return "brownout";
    case ESP_RST_SDIO: return "sdio";
    default: return "unknown";
  }
}

bool use_psram_for_frames() {
  if (!psramFound()) return false;
  camlink::set_frame_allocator({psram_alloc, psram_free_fn});
  return true;
}

void watchdog_begin(uint32_t timeout_s) {
#if ESP_IDF_VERSION_MAJOR >= 5
  esp_task_wdt_config_t cfg = {};
  cfg.timeout_ms = timeout_s * 1000u;
  cfg.idle_core_mask = 0;
  cfg.trigger_panic = true;
  if (esp_task_wdt_reconfigure(&cfg) != ESP_OK) esp_task_wdt_init(&cfg);
#else
  esp_task_wdt_init(timeout_s, true);  // re-initialises the timeout if already running
#endif
  esp_task_wdt_add(nullptr);
}

void watchdog_feed() { esp_task_wdt_reset(); }

void watchdog_add_current_task() { esp_task_wdt_add(nullptr); }

}  // namespace esp
