// OTA update state machine, portable: download -> verify -> commit, and after the
// reboot into the new image: confirm (broker reached) or roll back.
//
//   idle --start()--> downloading --feed()*--> end(): size and SHA-256 match?
//        yes: platform.finish() (the image's own checks) + set_boot() -> ready (reboot)
//        no / any error: platform.abort() -> failed (the running image stays)
//   boot of an image marked "pending verify" by the bootloader -> pending_verify
//        broker connected -> platform.mark_valid() -> confirmed
//        not connected within confirm_timeout_ms -> platform.rollback_and_reboot()
//        crash / watchdog reset before that -> the bootloader rolls back by itself
//
// The ESP32 layer (firmware/src/esp_ota.*) maps OtaPlatform onto esp_ota_begin/
// write/end/set_boot_partition, esp_ota_mark_app_valid_cancel_rollback and
// esp_ota_mark_app_invalid_rollback_and_reboot, and streams the HTTPS body
// (esp_http_client, the pinned CA) into feed() from its own task.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "camlink/sha256.h"

namespace camlink {

class OtaPlatform {
 public:
  virtual ~OtaPlatform() = default;
  /// Open the inactive OTA slot for an image of `size` bytes.
  virtual bool begin(uint32_t size, std::string* err) = 0;
  virtual bool write(const uint8_t* data, size_t n, std::string* err) = 0;
  /// Close the slot; the platform checks the image (esp_ota_end: magic, its own hash).
  virtual bool finish(std::string* err) = 0;
  /// Boot the new slot next time (esp_ota_set_boot_partition).
  virtual bool set_boot(std::string* err) = 0;
  /// Give up a started write (esp_ota_abort). Must be safe to call in any state.
  virtual void abort() = 0;
  /// The running image was just installed and waits for confirmation.
  virtual bool pending_verify() = 0;
  virtual void mark_valid() = 0;
  /// Mark the running image invalid and reboot into the previous one.
  virtual void rollback_and_reboot() = 0;
};

enum class OtaState : uint8_t {
  kIdle, kDownloading, kReady, kFailed, kPendingVerify, kConfirmed, kRolledBack,
};
const char* ota_state_name(OtaState s);

class OtaUpdater {
 public:
  OtaUpdater(OtaPlatform& p, uint32_t confirm_timeout_ms)
      : p_(p), confirm_timeout_ms_(confirm_timeout_ms) {}

  /// At boot: an image waiting for confirmation starts the confirmation timer.
  void on_boot(uint64_t now_ms);
  /// The broker connection is up (the new image works end to end).
  void on_broker_connected();
  /// Roll back when confirmation did not come in time.
  void tick(uint64_t now_ms);

  /// Begin an update; refused while one is running or waiting to reboot.
  bool start(const uint8_t sha256[32], uint32_t size, std::string* err);
  /// Body bytes, in order. False (and failed) on a platform error or too many bytes.
  bool feed(const uint8_t* data, size_t n);
  /// The body ended: verify size and digest, commit. False when failed.
  bool end();
  /// The download broke (HTTP status, TLS, timeout).
  void fail(const std::string& why);

  OtaState state() const { return state_.load(); }
  /// "idle", "downloading 12%", "failed: sha256 mismatch", ...
  std::string describe() const;
  uint32_t received() const { return received_; }
  bool reboot_due() const { return state_.load() == OtaState::kReady; }

 private:
  void set_failed(const std::string& why);

  OtaPlatform& p_;
  uint32_t confirm_timeout_ms_;
  std::atomic<OtaState> state_{OtaState::kIdle};
  Sha256 sha_;
  uint8_t want_[32] = {};
  uint32_t size_ = 0;
  std::atomic<uint32_t> received_{0};
  uint64_t confirm_deadline_ms_ = 0;
  std::string error_;
};

}  // namespace camlink
