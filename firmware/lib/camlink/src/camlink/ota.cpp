#include "camlink/ota.h"

#include <cstring>

namespace camlink {

const char* ota_state_name(OtaState s) {
  switch (s) {
    case OtaState::kIdle: return "idle";
    case OtaState::kDownloading: return "downloading";
    case OtaState::kReady: return "ready";
    case OtaState::kFailed: return "failed";
    case OtaState::kPendingVerify: return "pending_verify";
    case OtaState::kConfirmed: return "confirmed";
    case OtaState::kRolledBack: return "rolled_back";
  }
  return "?";
}

void OtaUpdater::on_boot(uint64_t now_ms) {
  if (p_.pending_verify()) {
    state_ = OtaState::kPendingVerify;
    confirm_deadline_ms_ = now_ms + confirm_timeout_ms_;
  }
}

void OtaUpdater::on_broker_connected() {
  if (state_.load() != OtaState::kPendingVerify) return;
  p_.mark_valid();
  state_ = OtaState::kConfirmed;
}

void OtaUpdater::tick(uint64_t now_ms) {
  if (state_.load() == OtaState::kPendingVerify && now_ms >= confirm_deadline_ms_) {
    state_ = OtaState::kRolledBack;
    p_.rollback_and_reboot();  // does not return on the device
  }
}

bool OtaUpdater::start(const uint8_t sha256[32], uint32_t size, std::string* err) {
  OtaState s = state_.load();
  if (s == OtaState::kDownloading || s == OtaState::kReady) {
    *err = "update already running";
    return false;
  }
  if (s == OtaState::kPendingVerify) {
    *err = "running image not confirmed yet";
    return false;
  }
  if (size == 0) {
    *err = "empty image";
    return false;
  }
  std::memcpy(want_, sha256, 32);
  size_ = size;
  received_ = 0;
  sha_.reset();
  error_.clear();
  std::string e;
  if (!p_.begin(size, &e)) {
    p_.abort();
    set_failed("begin: " + e);
    *err = error_;
    return false;
  }
  state_ = OtaState::kDownloading;
  return true;
}

void OtaUpdater::set_failed(const std::string& why) {
  error_ = why;
  state_ = OtaState::kFailed;
}

bool OtaUpdater::feed(const uint8_t* data, size_t n) {
  if (state_.load() != OtaState::kDownloading) return false;
  if (n > size_ - received_) {
    p_.abort();
    set_failed("image larger than announced");
    return false;
  }
  std::string e;
  if (!p_.write(data, n, &e)) {
    p_.abort();
    set_failed("write: " + e);
    return false;
  }
  sha_.update(data, n);
  received_ += static_cast<uint32_t>(n);
  return true;
}

bool OtaUpdater::end() {
  if (state_.load() != OtaState::kDownloading) return false;
  if (received_ != size_) {
    p_.abort();
    set_failed("image shorter than announced");
    return false;
  }
  uint8_t got[32];
  sha_.finish(got);
  if (std::memcmp(got, want_, 32) != 0) {
    p_.abort();
    set_failed("sha256 mismatch");
    return false;
  }
  std::string e;
  if (!p_.finish(&e)) {
    p_.abort();
    set_failed("image check: " + e);
    return false;
  }
  if (!p_.set_boot(&e)) {
    set_failed("set boot: " + e);
    return false;
  }
  state_ = OtaState::kReady;
  return true;
}

void OtaUpdater::fail(const std::string& why) {
  if (state_.load() != OtaState::kDownloading) return;
  p_.abort();
  set_failed("download: " + why);
}

std::string OtaUpdater::describe() const {
  OtaState s = state_.load();
  if (s == OtaState::kFailed) return std::string("failed: ") + error_;
  if (s == OtaState::kDownloading && size_ > 0)
    return "downloading " + std::to_string(static_cast<uint64_t>(received_) * 100 / size_) + "%";
  return ota_state_name(s);
}

}  // namespace camlink
