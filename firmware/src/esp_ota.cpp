#include "esp_ota.h"

#include <Arduino.h>

#include <cstring>

#include "camlink/netcfg.h"
#include "esp_http_client.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

// Arduino-ESP32 marks a pending image valid at start-up unless this returns true:
// we confirm only after the broker connection (EspOta::mark_valid).
extern "C" bool verifyRollbackLater() { return true; }

namespace esp {
namespace {

std::string err_name(esp_err_t e) { return esp_err_to_name(e); }

// "https://host:port/path" -> host
std::string url_host(const std::string& url) {
  size_t start = url.find("://");
  start = start == std::string::npos ? 0 : start + 3;
  size_t end = url.find_first_of(":/", start);
  if (!url.empty() && url[start] == '[') end = url.find(']', start) + 1;
  return url.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

}  // namespace

bool EspOta::request(const std::string& url, const uint8_t sha256[32], uint32_t size,
                     std::string* err) {
  camlink::OtaState s = updater_.state();
  if (busy_.load() || s == camlink::OtaState::kReady) {
    *err = "update already running";
    return false;
  }
  if (s == camlink::OtaState::kPendingVerify) {
    *err = "running image not confirmed yet";
    return false;
  }
  url_ = url;
  std::memcpy(sha_, sha256, 32);
  size_ = size;
  busy_ = true;
  // esp_ota_begin erases the slot (seconds) and the download blocks: own task.
  if (xTaskCreatePinnedToCore(&EspOta::task_main, "ota", 8192, this, 1, nullptr, 0) != pdTRUE) {
    busy_ = false;
    *err = "no memory for the ota task";
    return false;
  }
  return true;
}

void EspOta::task_main(void* arg) {
  auto* self = static_cast<EspOta*>(arg);
  self->download();
  self->busy_ = false;
  vTaskDelete(nullptr);
}

void EspOta::download() {
  std::string err;
  if (!updater_.start(sha_, size_, &err)) {
    log_e("ota: %s", err.c_str());
    return;
  }
  std::string host = url_host(url_);
  // esp_http_client has no common_name field in IDF 4.4 (nor in 5.0): with an IP host
  // only the chain (the pinned camstack CA) is verified, as for MQTT on IDF 4.4.
  camlink::TlsNamePlan tls = camlink::tls_name_plan(host.c_str(), tls_name_, false);
  esp_http_client_config_t c = {};
  c.url = url_.c_str();
  c.cert_pem = ca_pem_;
  c.timeout_ms = 10000;
  c.buffer_size = 4096;
  c.skip_cert_common_name_check = tls.skip_cn_check;
  esp_http_client_handle_t h = esp_http_client_init(&c);
  if (h == nullptr) {
    updater_.fail("http client init");
    return;
  }
  esp_err_t e = esp_http_client_open(h, 0);
  if (e != ESP_OK) {
    updater_.fail("connect: " + err_name(e));
    esp_http_client_cleanup(h);
    return;
  }
  int64_t len = esp_http_client_fetch_headers(h);
  int status = esp_http_client_get_status_code(h);
  if (status != 200) {
    updater_.fail("http " + std::to_string(status));
  } else if (len >= 0 && len != static_cast<int64_t>(size_)) {
    updater_.fail("content-length " + std::to_string(len));
  } else {
    static char buf[4096];  // this task's only buffer, off its stack
    for (;;) {
      int n = esp_http_client_read(h, buf, sizeof(buf));
      if (n < 0) {
        updater_.fail("read");
        break;
      }
      if (n == 0) {
        if (updater_.end()) log_i("ota: image verified, boot slot switched");
        break;
      }
      if (!updater_.feed(reinterpret_cast<const uint8_t*>(buf), static_cast<size_t>(n))) break;
    }
  }
  if (updater_.state() == camlink::OtaState::kFailed)
    log_e("ota: %s", updater_.describe().c_str());
  esp_http_client_close(h);
  esp_http_client_cleanup(h);
}

bool EspOta::begin(uint32_t size, std::string* err) {
  target_ = esp_ota_get_next_update_partition(nullptr);
  if (target_ == nullptr) {
    *err = "no OTA slot (partition table without ota_0/ota_1)";
    return false;
  }
  if (size > target_->size) {
    *err = "image larger than the slot";
    return false;
  }
  esp_err_t e = esp_ota_begin(target_, size, &handle_);
  if (e != ESP_OK) {
    *err = err_name(e);
    return false;
  }
  open_ = true;
  return true;
}

bool EspOta::write(const uint8_t* data, size_t n, std::string* err) {
  esp_err_t e = esp_ota_write(handle_, data, n);
  if (e != ESP_OK) {
    *err = err_name(e);
    return false;
  }
  return true;
}

bool EspOta::finish(std::string* err) {
  open_ = false;
  esp_err_t e = esp_ota_end(handle_);  // checks the image (magic, segments, its hash)
  if (e != ESP_OK) {
    *err = err_name(e);
    return false;
  }
  return true;
}

bool EspOta::set_boot(std::string* err) {
  esp_err_t e = esp_ota_set_boot_partition(target_);
  if (e != ESP_OK) {
    *err = err_name(e);
    return false;
  }
  return true;
}

void EspOta::abort() {
  if (open_) esp_ota_abort(handle_);
  open_ = false;
}

bool EspOta::pending_verify() {
  esp_ota_img_states_t st = ESP_OTA_IMG_UNDEFINED;
  const esp_partition_t* running = esp_ota_get_running_partition();
  return running != nullptr && esp_ota_get_state_partition(running, &st) == ESP_OK &&
         st == ESP_OTA_IMG_PENDING_VERIFY;
}

void EspOta::mark_valid() {
  esp_err_t e = esp_ota_mark_app_valid_cancel_rollback();
  log_i("ota: new image confirmed (%s)", esp_err_to_name(e));
}

void EspOta::rollback_and_reboot() {
  log_e("ota: new image did not reach the broker in time: rolling back");
  esp_ota_mark_app_invalid_rollback_and_reboot();
}

}  // namespace esp
