#include "esp_mqtt_link.h"

#include <Arduino.h>

#include <cstring>

#include "camlink/netcfg.h"
#include "camlink/status.h"
#include "esp_idf_version.h"

namespace esp {

EspMqtt::EspMqtt(camlink::Rng& rng, uint32_t backoff_base_ms, uint32_t backoff_max_ms)
    : backoff_(backoff_base_ms, backoff_max_ms, rng) {}

bool EspMqtt::begin(const MqttSettings& s) {
  s_ = s;
  events_ = xQueueCreate(64, sizeof(Event));
  cmds_ = xQueueCreate(2, sizeof(CmdMsg));
  rx_ = new CmdMsg();
  if (events_ == nullptr || cmds_ == nullptr || rx_ == nullptr) return false;
#if ESP_IDF_VERSION_MAJOR >= 5
  const bool can_set_cn = true;
#else
  const bool can_set_cn = false;
#endif
  camlink::TlsNamePlan tls = camlink::tls_name_plan(s.host, s.tls_name, can_set_cn);
  if (tls.error != nullptr) {
    log_e("%s", tls.error);
    return false;
  }
  if (tls.skip_cn_check)
    log_w("broker host %s is an IP address: IDF 4.4 verifies the CA chain only", s.host);
  will_ = camlink::offline_status_json();
  uri_ = std::string("mqtts://") + s.host + ":" + std::to_string(s.port);
  // One MQTT packet per chunk: header + data + topic + fixed header must fit the
  // output buffer, so esp-mqtt never fragments a QoS 1 publish.
  const int out_size = static_cast<int>(s.chunk_data) + 36 + 256;

  esp_mqtt_client_config_t c = {};
#if ESP_IDF_VERSION_MAJOR >= 5
  c.broker.address.uri = uri_.c_str();
  c.broker.verification.certificate = s.ca_pem;  // PEM, NUL-terminated
  c.broker.verification.common_name = tls.common_name;
  c.broker.verification.skip_cert_common_name_check = tls.skip_cn_check;
  c.credentials.username = s.device_id;
  c.credentials.client_id = s.device_id;
  c.credentials.authentication.password = s.password;
  c.session.last_will.topic = s_.status_topic.c_str();
  c.session.last_will.msg = will_.c_str();
  c.session.last_will.msg_len = static_cast<int>(will_.size());
  c.session.last_will.qos = 1;
  c.session.last_will.retain = 1;
  c.session.keepalive = s.keepalive_s;
  c.network.reconnect_timeout_ms = 60000;
  c.network.timeout_ms = 5000;
  c.session.message_retransmit_timeout = s.retransmit_ms;
  c.buffer.size = 2048;
  c.buffer.out_size = out_size;
  c.task.stack_size = 6144;
#else
  c.uri = uri_.c_str();
  c.cert_pem = s.ca_pem;  // PEM, NUL-terminated
  c.skip_cert_common_name_check = tls.skip_cn_check;
  c.username = s.device_id;
  c.client_id = s.device_id;
  c.password = s.password;
  c.lwt_topic = s_.status_topic.c_str();
  c.lwt_msg = will_.c_str();
  c.lwt_msg_len = static_cast<int>(will_.size());
  c.lwt_qos = 1;
  c.lwt_retain = 1;
  c.keepalive = s.keepalive_s;
  c.reconnect_timeout_ms = 60000;
  c.network_timeout_ms = 5000;
  c.message_retransmit_timeout = s.retransmit_ms;
  c.buffer_size = 2048;
  c.out_buffer_size = out_size;
  c.task_stack = 6144;
#endif
  client_ = esp_mqtt_client_init(&c);
  if (client_ == nullptr) return false;
  esp_mqtt_client_register_event(client_, static_cast<esp_mqtt_event_id_t>(ESP_EVENT_ANY_ID),
                                 &EspMqtt::on_event, this);
  return true;
}

void EspMqtt::on_event(void* arg, esp_event_base_t, int32_t, void* data) {
  static_cast<EspMqtt*>(arg)->handle(static_cast<esp_mqtt_event_handle_t>(data));
}

void EspMqtt::push(Ev t, int32_t msg_id) {
  Event e{t, msg_id};
  if (xQueueSend(events_, &e, 0) != pdTRUE) ++dropped_events_;  // a lost ack: ack timeout resends
}

void EspMqtt::handle(esp_mqtt_event_handle_t e) {
  switch (e->event_id) {
    case MQTT_EVENT_CONNECTED:
      esp_mqtt_client_subscribe(client_, s_.cmd_topic.c_str(), 1);
      push(Ev::kConnected, 0);
      break;
    case MQTT_EVENT_DISCONNECTED: push(Ev::kDisconnected, 0); break;
    case MQTT_EVENT_PUBLISHED: push(Ev::kPublished, e->msg_id); break;
    case MQTT_EVENT_ERROR:
      if (e->error_handle != nullptr)
        log_w("mqtt error type=%d tls=0x%x connack=%d",
              static_cast<int>(e->error_handle->error_type),
              static_cast<unsigned>(e->error_handle->esp_tls_last_esp_err),
              static_cast<int>(e->error_handle->connect_return_code));
      push(Ev::kError, 0);
      break;
    case MQTT_EVENT_DATA: {
      // Commands are small: only whole, single-event messages are accepted.
      if (e->current_data_offset != 0 || e->data_len != e->total_data_len ||
          e->data_len > static_cast<int>(kMaxCmd) || e->topic_len <= 0 ||
          e->topic_len >= static_cast<int>(kMaxTopic)) {
        log_w("command too large or fragmented, ignored");
        break;
      }
      CmdMsg& m = *rx_;  // only this (MQTT) task writes it; xQueueSend copies it
      std::memcpy(m.topic, e->topic, static_cast<size_t>(e->topic_len));
      m.topic[e->topic_len] = '\0';
      m.len = static_cast<uint16_t>(e->data_len);
      std::memcpy(m.data, e->data, static_cast<size_t>(e->data_len));
      if (xQueueSend(cmds_, &m, 0) != pdTRUE) ++dropped_events_;
      break;
    }
    default: break;
  }
}

void EspMqtt::loop(uint64_t now, bool wifi_up, camlink::CamNode& node) {
  Event ev;
  while (xQueueReceive(events_, &ev, 0) == pdTRUE) {
    switch (ev.type) {
      case Ev::kConnected:
        connected_ = true;
        backoff_.reset();
        next_reconnect_ms_ = 0;
        node.on_connected();
        log_i("mqtt connected");
        break;
      case Ev::kDisconnected:
      case Ev::kError:
        if (connected_) {
          connected_ = false;
          node.on_disconnected();
          log_w("mqtt disconnected");
        }
        if (next_reconnect_ms_ == 0) next_reconnect_ms_ = now + backoff_.next_delay_ms();
        break;
      case Ev::kPublished: node.on_published(ev.msg_id); break;
    }
  }
  static CmdMsg m;  // 1 KB: keep it off the loop task's stack
  while (xQueueReceive(cmds_, &m, 0) == pdTRUE) node.on_message(m.topic, m.data, m.len);

  if (!wifi_up) return;
  if (!started_) {
    started_ = esp_mqtt_client_start(client_) == ESP_OK;
    return;
  }
  if (!connected_ && next_reconnect_ms_ != 0 && now >= next_reconnect_ms_) {
    // Works while esp-mqtt waits to reconnect; ignored (ESP_FAIL) while it is connecting.
    esp_mqtt_client_reconnect(client_);
    next_reconnect_ms_ = now + backoff_.next_delay_ms();
  }
}

int EspMqtt::publish(const char* topic, const uint8_t* payload, size_t len, int qos,
                     bool retain) {
  if (client_ == nullptr || !connected_) return -1;
  // Into the outbox; the MQTT task writes it. No TLS write on the caller's task.
  return esp_mqtt_client_enqueue(client_, topic, reinterpret_cast<const char*>(payload),
                                 static_cast<int>(len), qos, retain ? 1 : 0, true);
}

}  // namespace esp
