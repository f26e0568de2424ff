// A tiny baseline JPEG encoder for test frames (host only). Grayscale, every
// 8x8 block flat (DC-only), so it needs no DCT: a moving diagonal gradient, a
// moving bright bar and the frame number in binary along the top row. The
// result is a valid JFIF file any decoder (libjpeg, FFmpeg/PyAV, Pillow)
// reads. Optional COM segments pad it to a target size so tests can make
// multi-chunk frames.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace testjpeg {

/// width/height are rounded up to multiples of 8 (min 8). pad_to = 0: no padding.
std::vector<uint8_t> make(int width, int height, uint32_t frame_no, const std::string& comment,
                          size_t pad_to = 0);

}  // namespace testjpeg
