// CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320), identical to zlib.crc32.
#pragma once

#include <cstddef>
#include <cstdint>

namespace camlink {

/// Continue a CRC: pass 0 to start, then the previous result.
uint32_t crc32_update(uint32_t crc, const uint8_t* data, size_t len);

/// CRC of a whole buffer.
inline uint32_t crc32(const uint8_t* data, size_t len) { return crc32_update(0, data, len); }

}  // namespace camlink
