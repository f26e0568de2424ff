// esp_http_client as in ESP-IDF 4.4, reduced to what the firmware uses.
#pragma once
#include <cstdint>
#include "esp_err.h"
typedef struct esp_http_client* esp_http_client_handle_t;
typedef enum { HTTP_METHOD_GET = 0 } esp_http_client_method_t;
typedef struct {
  const char* url;
  const char* host;
  int port;
  const char* username;
  const char* password;
  int auth_type;
  const char* path;
  const char* query;
  const char* cert_pem;
  size_t cert_len;
  const char* client_cert_pem;
  size_t client_cert_len;
  const char* client_key_pem;
  size_t client_key_len;
  const char* client_key_password;
  size_t client_key_password_len;
  const char* user_agent;
  esp_http_client_method_t method;
  int timeout_ms;
  bool disable_auto_redirect;
  int max_redirection_count;
  int max_authorization_retries;
  void* event_handler;
  int transport_type;
  int buffer_size;
  int buffer_size_tx;
  void* user_data;
  bool is_async;
  bool use_global_ca_store;
  bool skip_cert_common_name_check;
  bool keep_alive_enable;
} esp_http_client_config_t;
esp_http_client_handle_t esp_http_client_init(const esp_http_client_config_t* config);
esp_err_t esp_http_client_open(esp_http_client_handle_t client, int write_len);
int esp_http_client_fetch_headers(esp_http_client_handle_t client);
int esp_http_client_get_status_code(esp_http_client_handle_t client);
int esp_http_client_read(esp_http_client_handle_t client, char* buffer, int len);
esp_err_t esp_http_client_close(esp_http_client_handle_t client);
esp_err_t esp_http_client_cleanup(esp_http_client_handle_t client);
