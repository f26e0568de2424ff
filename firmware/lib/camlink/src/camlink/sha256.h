// SHA-256 (FIPS 180-4), portable, streaming: checks OTA images on the device
// (the same digest `device ota` computes with hashlib on the server).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace camlink {

class Sha256 {
 public:
  Sha256() { reset(); }
  void reset();
  void update(const uint8_t* data, size_t n);
  /// Final digest; the object must be reset() before reuse.
  void finish(uint8_t out[32]);

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

/// Lower-case hex of a digest.
std::string to_hex(const uint8_t* d, size_t n);

}  // namespace camlink
