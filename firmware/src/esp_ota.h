// OTA over HTTPS, the thin ESP32 side of camlink::OtaUpdater: esp_ota_* on the
// inactive slot (partitions_ota.csv: two 1.9 MB app slots), the body streamed with
// esp_http_client (the pinned camstack CA) in its own task, confirmation with
// esp_ota_mark_app_valid_cancel_rollback() once the new image has reached the broker,
// rollback with esp_ota_mark_app_invalid_rollback_and_reboot() otherwise.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "camlink/interfaces.h"
#include "camlink/ota.h"
#include "esp_ota_ops.h"

namespace esp {

class EspOta : public camlink::OtaPlatform, public camlink::OtaHandler {
 public:
  EspOta(const char* ca_pem, const char* tls_name, uint32_t confirm_timeout_ms)
      : ca_pem_(ca_pem), tls_name_(tls_name), updater_(*this, confirm_timeout_ms) {}

  camlink::OtaUpdater& updater() { return updater_; }

  // camlink::OtaHandler (loop task)
  bool request(const std::string& url, const uint8_t sha256[32], uint32_t size,
               std::string* err) override;
  std::string state() override { return updater_.describe(); }

  // camlink::OtaPlatform
  bool begin(uint32_t size, std::string* err) override;
  bool write(const uint8_t* data, size_t n, std::string* err) override;
  bool finish(std::string* err) override;
  bool set_boot(std::string* err) override;
  void abort() override;
  bool pending_verify() override;
  void mark_valid() override;
  void rollback_and_reboot() override;

 private:
  static void task_main(void* arg);
  void download();

  const char* ca_pem_;
  const char* tls_name_;
  camlink::OtaUpdater updater_;
  std::atomic<bool> busy_{false};
  std::string url_;
  uint8_t sha_[32] = {};
  uint32_t size_ = 0;
  const esp_partition_t* target_ = nullptr;
  esp_ota_handle_t handle_ = 0;
  bool open_ = false;
};

}  // namespace esp
