#include "wifi_link.h"

#include <Arduino.h>
#include <WiFi.h>

#include "camlink/netcfg.h"

namespace esp {

uint32_t WifiLink::next_window_ms() {
  return camlink::wifi_attempt_window_ms(backoff_.next_delay_ms(), min_attempt_ms_);
}

void WifiLink::begin(const char* ssid, const char* password, const char* hostname) {
  ssid_ = ssid;
  password_ = password;
  WiFi.persistent(false);  // no flash writes of credentials
  WiFi.setHostname(hostname);  // before mode(): Arduino-ESP32 2.x applies it at STA start
  WiFi.mode(WIFI_STA);
  WiFi.setAutoReconnect(false);
  WiFi.setSleep(false);  // modem sleep costs throughput and adds latency
  WiFi.begin(ssid_, password_);
  next_try_ms_ = millis() + next_window_ms();
}

void WifiLink::loop(uint64_t now) {
  bool connected = WiFi.status() == WL_CONNECTED;
  if (connected) {
    if (!up_) {
      log_i("wifi up: %s rssi %d", WiFi.localIP().toString().c_str(), WiFi.RSSI());
      if (ever_up_) ++reconnects_;
      ever_up_ = true;
      backoff_.reset();
    }
    up_ = true;
    return;
  }
  if (up_) log_w("wifi lost");
  up_ = false;
  if (now < next_try_ms_) return;  // the current attempt gets until then
  WiFi.disconnect();
  WiFi.begin(ssid_, password_);
  next_try_ms_ = now + next_window_ms();
}

}  // namespace esp
