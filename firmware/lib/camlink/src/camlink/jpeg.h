// The contract's JPEG test: SOI (FF D8) at the start, EOI (FF D9) at the end.
#pragma once

#include <cstddef>
#include <cstdint>

namespace camlink {

/// SOI at the start and EOI at the end (and at least 4 bytes), as the receiver checks.
inline bool looks_like_jpeg(const uint8_t* d, size_t n) {
  return d != nullptr && n >= 4 && d[0] == 0xFF && d[1] == 0xD8 && d[n - 2] == 0xFF &&
         d[n - 1] == 0xD9;
}

/// Length of a camera JPEG with trailing zero padding after the EOI removed
/// (some sensors/drivers pad the buffer). Scans back at most max_pad bytes.
/// Returns 0 when the buffer does not look like a JPEG even after trimming.
inline size_t jpeg_trimmed_len(const uint8_t* d, size_t n, size_t max_pad = 64) {
  if (d == nullptr || n < 4 || d[0] != 0xFF || d[1] != 0xD8) return 0;
  size_t end = n;
  size_t scanned = 0;
  while (end >= 4 && scanned <= max_pad) {
    if (d[end - 2] == 0xFF && d[end - 1] == 0xD9) return end;
    if (d[end - 1] != 0x00) return 0;
    --end;
    ++scanned;
  }
  return 0;
}

}  // namespace camlink
