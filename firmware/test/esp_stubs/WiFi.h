#pragma once
#include <cstdint>
typedef enum { WL_IDLE_STATUS = 0, WL_CONNECTED = 3, WL_DISCONNECTED = 6 } wl_status_t;
typedef enum { WIFI_OFF = 0, WIFI_STA = 1 } wifi_mode_t;
struct String { const char* c_str() const; };
struct IPAddress { String toString() const; };
struct WiFiClass {
  void persistent(bool);
  bool mode(wifi_mode_t);
  bool setHostname(const char*);
  bool setAutoReconnect(bool);
  bool setSleep(bool);
  wl_status_t begin(const char* ssid, const char* passphrase = nullptr);
  bool disconnect(bool wifioff = false, bool eraseap = false);
  wl_status_t status();
  int8_t RSSI();
  IPAddress localIP();
};
extern WiFiClass WiFi;
