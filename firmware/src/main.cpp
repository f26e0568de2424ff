// camstack ESP32-CAM firmware: thin glue between the ESP32 drivers and the
// portable camlink core (firmware/lib/camlink), which holds all the behaviour
// and is unit-tested on the host. Build: CAM_DEVICE=<id> pio run -e esp32cam
//
// Tasks: the Arduino loop task runs the core (events, commands, publishing); the
// capture task grabs frames on the interval and hands them over through a FreeRTOS
// queue, so a slow network never delays a capture (review defect 5); esp-mqtt runs
// its own task; an OTA download runs in its own task while it lasts.
//
// CAM_DEEP_SLEEP_S > 0: timelapse mode. Each wake captures CAM_SLEEP_FRAMES frames,
// sends them, and sleeps; boot_id and frame_seq survive in RTC memory.
#include <Arduino.h>

#include <algorithm>
#include <atomic>
#include <memory>

#include "app_config.h"
#include "board_pins.h"
#include "camlink/camera_plan.h"
#include "camlink/node.h"
#include "camlink/version.h"
#include "esp_attr.h"
#include "esp_cam.h"
#include "esp_mqtt_link.h"
#include "esp_ota.h"
#include "esp_platform.h"
#include "esp_sleep.h"
#include "esp_system.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "freertos/task.h"
#include "secrets_select.h"
#include "wifi_link.h"

namespace {

esp::EspClock g_clock;
esp::EspRng g_rng;
esp::EspCamera g_camera;
esp::WifiLink g_wifi(g_rng, CAM_WIFI_BACKOFF_BASE_MS, CAM_WIFI_BACKOFF_MAX_MS,
                     CAM_WIFI_ATTEMPT_MS);
esp::EspMqtt g_mqtt(g_rng, CAM_MQTT_BACKOFF_BASE_MS, CAM_MQTT_BACKOFF_MAX_MS);
esp::EspOta g_ota(CAM_CA_PEM, CAMLINK_BROKER_TLS_NAME, CAM_OTA_CONFIRM_MS);
std::unique_ptr<camlink::CamNode> g_node;
uint64_t g_reboot_at_ms = 0;
bool g_was_connected = false;

// Survives deep sleep (not a power-on): frame identity of the timelapse mode.
RTC_DATA_ATTR camlink::SleepIdentity g_rtc_identity;

class Sys : public esp::EspSys {
 public:
  const char* sensor() override { return g_camera.sensor_name(); }
  uint32_t camera_reinits() override { return reinits.load(); }
  std::atomic<uint32_t> reinits{0};
};
Sys g_sys;

// ---- capture task -> loop task
struct Capture {
  camlink::Bytes jpeg;
  uint64_t mono_ms = 0;
  bool ok = false;
};
QueueHandle_t g_captures = nullptr;        // Capture*, owned by the receiver
std::atomic<uint32_t> g_interval_ms{CAM_DEFAULT_INTERVAL_MS};
std::atomic<bool> g_camera_dead{false};    // re-inits did not help: reboot

[[noreturn]] void restart_after(uint32_t ms, const char* why) {
  log_e("restarting in %u ms: %s", static_cast<unsigned>(ms), why);
  delay(ms);
  esp_restart();
}

void capture_task(void*) {
  esp::watchdog_add_current_task();
  camlink::Cadence cadence(g_clock.mono_ms());
  camlink::CameraHealth health(CAM_MAX_CAPTURE_FAILURES, CAM_MAX_CAMERA_REINITS);
  for (;;) {
    esp::watchdog_feed();
    uint64_t now = g_clock.mono_ms();
    if (!cadence.due(now)) {
      vTaskDelay(pdMS_TO_TICKS(std::min<uint64_t>(50, cadence.ms_until(now))));
      continue;
    }
    auto* c = new Capture();
    c->mono_ms = now;
    c->ok = g_camera.capture(&c->jpeg);
    cadence.advance(g_interval_ms.load(), g_clock.mono_ms());
    switch (health.on_capture(c->ok)) {
      case camlink::CameraHealth::Action::kNone: break;
      case camlink::CameraHealth::Action::kReinit: {
        log_w("camera keeps failing: power-cycle and re-init");
        bool ok = g_camera.reinit();
        health.on_reinit_done(ok);
        g_sys.reinits = health.reinits();
        break;
      }
      case camlink::CameraHealth::Action::kReboot: g_camera_dead = true; break;
    }
    // Never wait for the loop task: a full queue drops this frame (counted).
    if (xQueueSend(g_captures, &c, 0) != pdTRUE) {
      c->ok = false;
      delete c;
    }
  }
}

void drain_captures() {
  Capture* c = nullptr;
  while (xQueueReceive(g_captures, &c, 0) == pdTRUE) {
    if (c->ok) {
      g_node->submit_capture(std::move(c->jpeg), c->mono_ms);
    } else {
      g_node->note_capture_error();
    }
    delete c;
  }
}

bool deep_sleep_mode() { return CAM_DEEP_SLEEP_S > 0; }

[[noreturn]] void sleep_now(const char* why) {
  camlink::save_identity(&g_rtc_identity, g_node->config().boot_id, g_node->next_seq());
  log_i("deep sleep %u s (%s), next frame_seq %u", static_cast<unsigned>(CAM_DEEP_SLEEP_S), why,
        static_cast<unsigned>(g_node->next_seq()));
  g_camera.power_down();
  esp_sleep_enable_timer_wakeup(static_cast<uint64_t>(CAM_DEEP_SLEEP_S) * 1000000ull);
  esp_deep_sleep_start();
}

}  // namespace

void setup() {
  Serial.begin(115200);
  pinMode(CAM_PIN_STATUS_LED, OUTPUT);
  digitalWrite(CAM_PIN_STATUS_LED, HIGH);  // off (active low)
  const char* reset_reason = esp::reset_reason_name();
  log_i("camstack fw %s, device %s, reset reason %s", CAMLINK_FW_VERSION, CAM_DEVICE_ID,
        reset_reason);
  esp::watchdog_begin(CAM_WATCHDOG_S);
  g_ota.updater().on_boot(g_clock.mono_ms());

  bool psram = esp::use_psram_for_frames();
  if (!psram) log_w("no PSRAM: one DRAM frame buffer (VGA max), small queue");

  camlink::CameraSettings cam;
  cam.frame_size = CAM_DEFAULT_FRAME_SIZE;
  cam.jpeg_quality = CAM_DEFAULT_JPEG_QUALITY;
  cam.interval_ms = CAM_DEFAULT_INTERVAL_MS;
  // Bring-up retries after a PWDN power-cycle and falls back to a small DRAM
  // configuration before we give up and reboot (review defect 6).
  if (!g_camera.begin(cam, CAM_QUEUE_BYTES)) restart_after(5000, "camera bring-up failed");
  esp::watchdog_feed();
  const camlink::CameraPlan& plan = g_camera.plan();
  if (cam.frame_size > g_camera.max_frame_size()) cam.frame_size = g_camera.max_frame_size();
  int minq = camlink::min_jpeg_quality(cam.frame_size, g_camera.max_frame_size());
  if (cam.jpeg_quality < minq) cam.jpeg_quality = static_cast<uint8_t>(minq);

  g_wifi.begin(CAM_WIFI_SSID, CAM_WIFI_PASSWORD, CAM_DEVICE_ID);
  esp::start_sntp(CAM_NTP_SERVER);

  uint32_t boot_id = 0, first_seq = 0;
  // esp_random() is true random once the radio is on (it is by now).
  camlink::resume_identity(&g_rtc_identity, esp_reset_reason() == ESP_RST_DEEPSLEEP,
                           esp_random(), &boot_id, &first_seq);

  camlink::NodeConfig cfg;
  cfg.device_id = CAM_DEVICE_ID;
  cfg.prefix = CAM_TOPIC_PREFIX;
  cfg.fw = CAMLINK_FW_VERSION;
  cfg.boot_id = boot_id;
  cfg.first_seq = first_seq;
  cfg.reset_reason = reset_reason;
  cfg.camera = cam;
  cfg.max_frame_size = g_camera.max_frame_size();
  cfg.uplink.chunk_data = CAM_CHUNK_DATA;
  cfg.uplink.window = CAM_PUBLISH_WINDOW;
  cfg.uplink.ack_timeout_ms = CAM_ACK_TIMEOUT_MS;
  cfg.uplink.restart_after_ms = CAM_PARTIAL_TIMEOUT_MS;
  cfg.queue_bytes = plan.queue_bytes;
  cfg.queue_frames = CAM_QUEUE_FRAMES;
  cfg.status_period_ms = CAM_STATUS_PERIOD_MS;
  if (deep_sleep_mode()) {
    cfg.capture_in_tick = true;  // one short burst per wake, no capture task
    cfg.capture_limit = CAM_SLEEP_FRAMES;
  } else {
    cfg.capture_in_tick = false;
  }
  g_node.reset(new camlink::CamNode(cfg, g_clock, g_mqtt, g_camera, g_sys));
  g_node->set_ota_handler(&g_ota);
  log_i("boot_id %u from frame_seq %u, plan %s, queue %u bytes / %u frames",
        static_cast<unsigned>(boot_id), static_cast<unsigned>(first_seq), plan.name,
        static_cast<unsigned>(cfg.queue_bytes), static_cast<unsigned>(cfg.queue_frames));

  esp::MqttSettings ms;
  ms.host = CAM_MQTT_HOST;
  ms.port = CAM_MQTT_PORT;
  ms.device_id = CAM_DEVICE_ID;
  ms.password = CAM_MQTT_PASSWORD;
  ms.ca_pem = CAM_CA_PEM;
  ms.tls_name = CAMLINK_BROKER_TLS_NAME;
  ms.status_topic = g_node->status_topic();
  ms.cmd_topic = g_node->cmd_topic();
  ms.keepalive_s = CAM_MQTT_KEEPALIVE_S;
  ms.chunk_data = CAM_CHUNK_DATA;
  ms.retransmit_ms = CAM_MQTT_RETRANSMIT_MS;
  if (!g_mqtt.begin(ms)) restart_after(5000, "mqtt client init failed");

  if (!deep_sleep_mode()) {
    g_interval_ms = cam.interval_ms;
    g_captures = xQueueCreate(2, sizeof(Capture*));
    if (g_captures == nullptr ||
        xTaskCreatePinnedToCore(&capture_task, "capture", 4096, nullptr, 2, nullptr, 1) != pdTRUE)
      restart_after(5000, "capture task");
  }
}

void loop() {
  esp::watchdog_feed();
  uint64_t now = g_clock.mono_ms();
  g_wifi.loop(now);
  g_mqtt.loop(now, g_wifi.up(), *g_node);
  if (g_captures != nullptr) drain_captures();
  g_node->tick();
  g_interval_ms = g_node->camera_settings().interval_ms;

  bool connected = g_mqtt.connected();
  if (connected && !g_was_connected) g_ota.updater().on_broker_connected();  // OTA confirm
  g_was_connected = connected;
  g_ota.updater().tick(now);  // rolls back an unconfirmed image after CAM_OTA_CONFIRM_MS
  digitalWrite(CAM_PIN_STATUS_LED, connected ? HIGH : LOW);  // lit while offline

  if (g_camera_dead.load()) restart_after(100, "camera keeps failing after re-inits");
  if (g_node->reboot_requested() || g_ota.updater().reboot_due()) {
    // Let the status answering the command go out first; the last will then
    // marks the device offline until it is back.
    if (g_reboot_at_ms == 0) {
      g_reboot_at_ms = now + 1000;
      g_node->publish_status();
    }
    if (now >= g_reboot_at_ms) {
      g_camera.power_down();  // the sensor starts from power-on after the reboot
      restart_after(0, g_node->reboot_requested() ? "reboot command" : "ota update");
    }
  }
  camlink::OtaState ota = g_ota.updater().state();
  bool ota_busy = ota == camlink::OtaState::kDownloading || ota == camlink::OtaState::kReady ||
                  ota == camlink::OtaState::kPendingVerify;
  if (deep_sleep_mode() && !ota_busy && g_reboot_at_ms == 0) {
    if (g_node->done()) sleep_now("frames sent");
    // Unsent frames are lost with RAM; their frame_seq values are not reused.
    if (now >= CAM_SLEEP_AWAKE_MAX_MS) sleep_now("awake too long");
  }
  uint64_t idle = std::min<uint64_t>(10, g_node->ms_until_next_capture());
  delay(static_cast<uint32_t>(idle));
}
