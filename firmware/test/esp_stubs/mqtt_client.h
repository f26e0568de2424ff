// esp-mqtt as in ESP-IDF 4.4 (flat config struct), reduced to what the firmware uses.
#pragma once
#include <cstddef>
#include <cstdint>
#include "esp_err.h"
typedef const char* esp_event_base_t;
typedef void (*esp_event_handler_t)(void* arg, esp_event_base_t base, int32_t id, void* data);
#define ESP_EVENT_ANY_ID -1
typedef struct esp_mqtt_client* esp_mqtt_client_handle_t;
typedef enum {
  MQTT_EVENT_ANY = -1, MQTT_EVENT_ERROR = 0, MQTT_EVENT_CONNECTED, MQTT_EVENT_DISCONNECTED,
  MQTT_EVENT_SUBSCRIBED, MQTT_EVENT_UNSUBSCRIBED, MQTT_EVENT_PUBLISHED, MQTT_EVENT_DATA,
  MQTT_EVENT_BEFORE_CONNECT, MQTT_EVENT_DELETED,
} esp_mqtt_event_id_t;
typedef enum { MQTT_ERROR_TYPE_NONE = 0, MQTT_ERROR_TYPE_TCP_TRANSPORT, MQTT_ERROR_TYPE_CONNECTION_REFUSED } esp_mqtt_error_type_t;
typedef enum { MQTT_CONNECTION_ACCEPTED = 0 } esp_mqtt_connect_return_code_t;
typedef struct esp_mqtt_error_codes {
  esp_err_t esp_tls_last_esp_err;
  int esp_tls_stack_err;
  int esp_tls_cert_verify_flags;
  esp_mqtt_error_type_t error_type;
  esp_mqtt_connect_return_code_t connect_return_code;
  int esp_transport_sock_errno;
} esp_mqtt_error_codes_t;
typedef struct esp_mqtt_event_t {
  esp_mqtt_event_id_t event_id;
  esp_mqtt_client_handle_t client;
  void* user_context;
  char* data;
  int data_len;
  int total_data_len;
  int current_data_offset;
  char* topic;
  int topic_len;
  int msg_id;
  int session_present;
  esp_mqtt_error_codes_t* error_handle;
  bool retain;
  int qos;
  bool dup;
} esp_mqtt_event_t;
typedef esp_mqtt_event_t* esp_mqtt_event_handle_t;
typedef struct {
  void* event_handle;
  void* event_loop_handle;
  const char* host;
  const char* uri;
  uint32_t port;
  bool set_null_client_id;
  const char* client_id;
  const char* username;
  const char* password;
  const char* lwt_topic;
  const char* lwt_msg;
  int lwt_qos;
  int lwt_retain;
  int lwt_msg_len;
  int disable_clean_session;
  int keepalive;
  bool disable_auto_reconnect;
  void* user_context;
  int task_prio;
  int task_stack;
  int buffer_size;
  const char* cert_pem;
  size_t cert_len;
  const char* client_cert_pem;
  size_t client_cert_len;
  const char* client_key_pem;
  size_t client_key_len;
  int transport;
  int refresh_connection_after_ms;
  const void* psk_hint_key;
  bool use_global_ca_store;
  void* crt_bundle_attach;
  int reconnect_timeout_ms;
  const char** alpn_protos;
  const char* clientkey_password;
  int clientkey_password_len;
  int protocol_ver;
  int out_buffer_size;
  bool skip_cert_common_name_check;
  bool use_secure_element;
  void* ds_data;
  int network_timeout_ms;
  bool disable_keepalive;
  const char* path;
  int message_retransmit_timeout;
} esp_mqtt_client_config_t;
esp_mqtt_client_handle_t esp_mqtt_client_init(const esp_mqtt_client_config_t* config);
esp_err_t esp_mqtt_client_start(esp_mqtt_client_handle_t client);
esp_err_t esp_mqtt_client_reconnect(esp_mqtt_client_handle_t client);
int esp_mqtt_client_subscribe(esp_mqtt_client_handle_t client, const char* topic, int qos);
int esp_mqtt_client_enqueue(esp_mqtt_client_handle_t client, const char* topic, const char* data,
                            int len, int qos, int retain, bool store);
int esp_mqtt_client_publish(esp_mqtt_client_handle_t client, const char* topic, const char* data,
                            int len, int qos, int retain);
esp_err_t esp_mqtt_client_register_event(esp_mqtt_client_handle_t client,
                                         esp_mqtt_event_id_t event,
                                         esp_event_handler_t event_handler,
                                         void* event_handler_arg);
