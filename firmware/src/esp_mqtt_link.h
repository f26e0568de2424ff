// esp-mqtt adapter: TLS with the embedded CA, username = password account of
// the device, client id = device id, QoS 1, retained last will on the status
// topic. esp-mqtt runs its own task; its events are copied into FreeRTOS queues
// by the event handler and handed to the core in loop() on the Arduino loop
// task, so the core stays single-threaded.
//
// Reconnects: our jittered exponential backoff calls esp_mqtt_client_reconnect();
// esp-mqtt's own fixed reconnect (reconnect_timeout_ms) stays on as a safety net.
//
// Publishing (review defects 3, 4, 5): chunks are handed over with
// esp_mqtt_client_enqueue() (store = true): the MQTT task writes them, the caller never
// waits for a TLS write, and every accepted message has an id (a failed write leaves
// no id-less message in the outbox). esp-mqtt's own retransmission timer is set long
// (message_retransmit_timeout) so the core's ack timeout governs resends; acks are
// matched by id and generation in the core (uplink.h), so a late ack of an outbox
// copy cannot mark another chunk delivered.
//
// TLS name (review defect 1): with an IP address as host, the certificate is checked
// against CAMLINK_BROKER_TLS_NAME (camlink::tls_name_plan): IDF 5 verifies that DNS
// name; IDF 4.4's esp-mqtt has no common_name field, so there only the chain (the
// pinned camstack CA) is verified.
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
  const char* tls_name;  // "" or a DNS name in the broker certificate (IP hosts)
  std::string status_topic;
  std::string cmd_topic;
  int keepalive_s;
  size_t chunk_data;
  int retransmit_ms;
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
  CmdMsg* rx_ = nullptr;  // the MQTT task's copy buffer: heap, not its 6 KB stack (defect 8)
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
