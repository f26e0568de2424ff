// camstack ESP32-CAM firmware: thin glue between the ESP32 drivers and the
// portable camlink core (firmware/lib/camlink), which holds all the behaviour
// and is unit-tested on the host. Build: CAM_DEVICE=<id> pio run -e esp32cam
#include <Arduino.h>

#include <algorithm>
#include <memory>

#include "app_config.h"
#include "board_pins.h"
#include "camlink/node.h"
#include "camlink/version.h"
#include "esp_cam.h"
#include "esp_mqtt_link.h"
#include "esp_platform.h"
#include "esp_system.h"
#include "secrets_select.h"
#include "wifi_link.h"

namespace {

esp::EspClock g_clock;
esp::EspSys g_sys;
esp::EspRng g_rng;
esp::EspCamera g_camera;
esp::WifiLink g_wifi(g_rng, CAM_WIFI_BACKOFF_BASE_MS, CAM_WIFI_BACKOFF_MAX_MS);
esp::EspMqtt g_mqtt(g_rng, CAM_MQTT_BACKOFF_BASE_MS, CAM_MQTT_BACKOFF_MAX_MS);
std::unique_ptr<camlink::CamNode> g_node;
uint64_t g_reboot_at_ms = 0;

[[noreturn]] void restart_after(uint32_t ms, const char* why) {
  log_e("restarting in %u ms: %s", static_cast<unsigned>(ms), why);
  delay(ms);
  esp_restart();
  for (;;) {
  }
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

  if (!esp::use_psram_for_frames()) log_w("no PSRAM: offline queue in internal RAM, kept small");

  camlink::CameraSettings cam;
  cam.frame_size = CAM_DEFAULT_FRAME_SIZE;
  cam.jpeg_quality = CAM_DEFAULT_JPEG_QUALITY;
  cam.interval_ms = CAM_DEFAULT_INTERVAL_MS;
  if (!g_camera.begin(cam)) restart_after(5000, "camera init failed");
  esp::watchdog_feed();

  g_wifi.begin(CAM_WIFI_SSID, CAM_WIFI_PASSWORD, CAM_DEVICE_ID);
  esp::start_sntp(CAM_NTP_SERVER);

  camlink::NodeConfig cfg;
  cfg.device_id = CAM_DEVICE_ID;
  cfg.prefix = CAM_TOPIC_PREFIX;
  cfg.fw = CAMLINK_FW_VERSION;
  cfg.boot_id = esp_random();  // hardware RNG; the radio is on by now (true random)
  cfg.reset_reason = reset_reason;
  cfg.camera = cam;
  cfg.uplink.chunk_data = CAM_CHUNK_DATA;
  cfg.uplink.window = CAM_PUBLISH_WINDOW;
  cfg.uplink.ack_timeout_ms = CAM_ACK_TIMEOUT_MS;
  size_t psram = ESP.getFreePsram();
  cfg.queue_bytes = psram > 0 ? std::min<size_t>(CAM_QUEUE_BYTES, psram / 2) : 96u * 1024u;
  cfg.queue_frames = CAM_QUEUE_FRAMES;
  cfg.status_period_ms = CAM_STATUS_PERIOD_MS;
  g_node.reset(new camlink::CamNode(cfg, g_clock, g_mqtt, g_camera, g_sys));
  log_i("boot_id %u, queue %u bytes / %u frames", static_cast<unsigned>(cfg.boot_id),
        static_cast<unsigned>(cfg.queue_bytes), static_cast<unsigned>(cfg.queue_frames));

  esp::MqttSettings ms;
  ms.host = CAM_MQTT_HOST;
  ms.port = CAM_MQTT_PORT;
  ms.device_id = CAM_DEVICE_ID;
  ms.password = CAM_MQTT_PASSWORD;
  ms.ca_pem = CAM_CA_PEM;
  ms.status_topic = g_node->status_topic();
  ms.cmd_topic = g_node->cmd_topic();
  ms.keepalive_s = CAM_MQTT_KEEPALIVE_S;
  ms.chunk_data = CAM_CHUNK_DATA;
  if (!g_mqtt.begin(ms)) restart_after(5000, "mqtt client init failed");
}

void loop() {
  esp::watchdog_feed();
  uint64_t now = g_clock.mono_ms();
  g_wifi.loop(now);
  g_mqtt.loop(now, g_wifi.up(), *g_node);
  g_node->tick();
  digitalWrite(CAM_PIN_STATUS_LED, g_mqtt.connected() ? HIGH : LOW);  // lit while offline

  if (g_camera.consecutive_failures() >= CAM_MAX_CAPTURE_FAILURES)
    restart_after(100, "camera keeps failing");
  if (g_node->reboot_requested()) {
    // Let the status answering the command go out first; the last will then
    // marks the device offline until it is back.
    if (g_reboot_at_ms == 0) g_reboot_at_ms = now + 1000;
    if (now >= g_reboot_at_ms) restart_after(0, "reboot command");
  }
  uint64_t idle = std::min<uint64_t>(10, g_node->ms_until_next_capture());
  delay(static_cast<uint32_t>(idle));
}
