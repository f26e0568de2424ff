// The abstract edges of the core. The ESP32 build implements them with
// esp_timer/SNTP, esp-mqtt and esp_camera; the host build with std::chrono,
// libmosquitto and files; the unit tests with fakes.
//
// Threading: the core is single-threaded. Adapters must deliver connection,
// publish-acknowledgement and message events on the thread that calls
// CamNode::tick() (the ESP32 layer forwards esp-mqtt events through a FreeRTOS
// queue; the host uses mosquitto_loop() on the same thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "camlink/bytes.h"
#include "camlink/command.h"

namespace camlink {

class Clock {
 public:
  virtual ~Clock() = default;
  /// Monotonic milliseconds (since boot).
  virtual uint64_t mono_ms() = 0;
  /// Unix epoch milliseconds when the wall clock is synchronised (SNTP); false otherwise.
  virtual bool wall_ms(uint64_t* out) = 0;
};

class MqttPublisher {
 public:
  virtual ~MqttPublisher() = default;
  /// Publish; returns the message id (>= 0) whose acknowledgement will later be
  /// reported through CamNode::on_published(), or < 0 when the message was not
  /// accepted. Must not call back into the core synchronously.
  virtual int publish(const char* topic, const uint8_t* payload, size_t len, int qos,
                      bool retain) = 0;
};

class Camera {
 public:
  virtual ~Camera() = default;
  /// Capture one JPEG into out (a copy the core owns; the driver buffer is
  /// returned before this call ends). False on a capture error.
  virtual bool capture(Bytes* out) = 0;
  /// Apply settings (frame size, quality; interval is the core's). False + err on failure.
  virtual bool apply(const CameraSettings& s, std::string* err) = 0;
};

class SystemInfo {
 public:
  virtual ~SystemInfo() = default;
  virtual int rssi() { return 0; }
  virtual uint32_t heap_free() { return 0; }
  virtual uint32_t psram_free() { return 0; }
  /// Extras for the status (empty / 0 when unknown).
  virtual const char* sensor() { return ""; }
  virtual uint32_t camera_reinits() { return 0; }
};

/// Where an "ota" command goes (the ESP32 build: OtaUpdater + a download task).
class OtaHandler {
 public:
  virtual ~OtaHandler() = default;
  /// Start an update; false + err when refused (one already running, bad request).
  virtual bool request(const std::string& url, const uint8_t sha256[32], uint32_t size,
                       std::string* err) = 0;
  /// Short state for the status: "idle", "downloading", "failed: ...", ...
  virtual std::string state() = 0;
};

}  // namespace camlink
