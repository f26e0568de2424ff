// esp-mqtt adapter: TLS with the embedded CA, username = password account of
// the device, client id = device id, QoS 1, retained last will on the status
// topic. esp-mqtt runs its own task; its events are copied into FreeRTOS queues
// by the event handler and handed to the core in loop() on the Arduino loop
// task, so the core stays single-threaded.
//
// Reconnects: our jittered exponential backoff calls esp_mqtt_client_reconnect();
// esp-mqtt's own fixed reconnect (reconnect_timeout_ms) stays on as a safety net.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "camlink/backoff.h"
#include "camlink/interfaces.h"
#include "camlink/node.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "mqtt_client.h"

namespace esp {

struct MqttSettings {
  const char* host;
  uint32_t port;
  const char* device_id;
  const char* password;
  const char* ca_pem;
  std::string status_topic;
  std::string cmd_topic;
  int keepalive_s;
  size_t chunk_data;
};

class EspMqtt : public camlink::MqttPublisher {
 public:
  EspMqtt(camlink::Rng& rng, uint32_t backoff_base_ms, uint32_t backoff_max_ms);

  bool begin(const MqttSettings& s);
  /// Deliver queued events to the node; start or reconnect when Wi-Fi is up.
  void loop(uint64_t now_ms, bool wifi_up, camlink::CamNode& node);
  int publish(const char* topic, const uint8_t* payload, size_t len, int qos,
              bool retain) override;
  bool connected() const { return connected_; }
  uint32_t dropped_events() const { return dropped_events_; }

 private:
  enum class Ev : uint8_t { kConnected, kDisconnected, kPublished, kError };
  struct Event {
    Ev type;
    int32_t msg_id;
  };
  static constexpr size_t kMaxTopic = 96;
  static constexpr size_t kMaxCmd = 1024;  // camlink::kMaxJsonInput
  struct CmdMsg {
    char topic[kMaxTopic];
    uint16_t len;
    uint8_t data[kMaxCmd];
  };

  static void on_event(void* arg, esp_event_base_t base, int32_t id, void* data);
  void handle(esp_mqtt_event_handle_t e);  // runs in the esp-mqtt task
  void push(Ev t, int32_t msg_id);

  MqttSettings s_{};
  esp_mqtt_client_handle_t client_ = nullptr;
  QueueHandle_t events_ = nullptr;
  QueueHandle_t cmds_ = nullptr;
  camlink::Backoff backoff_;
  bool started_ = false;
  bool connected_ = false;
  uint64_t next_reconnect_ms_ = 0;
  volatile uint32_t dropped_events_ = 0;
  std::string will_;
  std::string uri_;
};

}  // namespace esp
