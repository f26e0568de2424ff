// Writes the cross-language chunk vectors (JSON) produced by the C++ core to
// stdout. tests/unit/test_vectors.py checks that the Python codec produces and
// decodes exactly these bytes, and that this output equals the committed
// tests/vectors/chunks_v1.json.
#include <cinttypes>
#include <cstdio>
#include <string>
#include <vector>

#include "camlink/backoff.h"
#include "camlink/chunk.h"
#include "camlink/crc32.h"

using namespace camlink;

namespace {

std::string hex(const uint8_t* d, size_t n) {
  static const char* k = "0123456789abcdef";
  std::string s;
  s.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    s += k[d[i] >> 4];
    s += k[d[i] & 15];
  }
  return s;
}

// Deterministic pseudo-JPEG: SOI + xorshift bytes + EOI.
std::vector<uint8_t> jpeg(size_t n, uint32_t seed) {
  XorShiftRng rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng.next_u32() >> 24);
  v[0] = 0xFF;
  v[1] = 0xD8;
  v[n - 2] = 0xFF;
  v[n - 1] = 0xD9;
  return v;
}

struct Case {
  const char* name;
  std::vector<uint8_t> data;
  uint32_t boot_id;
  uint32_t frame_seq;
  uint64_t capture_ms;
  bool clock_synced;
  size_t chunk_data;
};

}  // namespace

int main() {
  std::vector<Case> cases = {
      {"minimal_jpeg_single_chunk", {0xFF, 0xD8, 0xFF, 0xD9}, 0, 0, 0, false, 8192},
      {"exactly_one_full_chunk", jpeg(100, 1), 1, 1, 1, false, 100},
      {"exact_multiple", jpeg(64, 2), 0x01020304u, 7, 1795515300000ull, true, 16},
      {"remainder_chunk", jpeg(1000, 3), 0xDEADBEEFu, 41, 1795515300123ull, true, 300},
      {"one_byte_chunks", {0xFF, 0xD8, 0x00, 0xFF, 0xD9}, 5, 6, 7, false, 1},
      {"max_field_values", jpeg(40, 4), 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFFFFFFFFFull, true, 32},
      {"default_chunk_size_two_chunks", jpeg(8193, 5), 3735928559u, 118, 1795515599000ull, true,
       kDefaultChunkData},
      {"unsynced_nonzero_capture", jpeg(2500, 6), 12345, 0, 987654321, false, 1024},
  };

  std::printf("{\n  \"format\": \"camstack-chunk-vectors\",\n  \"version\": 1,\n");
  std::printf("  \"generator\": \"firmware/host/gen_vectors.cpp (camlink C++ core)\",\n");
  std::printf("  \"crc32\": [\n");
  const char* crc_inputs[] = {"", "a", "123456789", "The quick brown fox jumps over the lazy dog"};
  for (size_t i = 0; i < 4; ++i) {
    const auto* d = reinterpret_cast<const uint8_t*>(crc_inputs[i]);
    size_t n = std::char_traits<char>::length(crc_inputs[i]);
    std::printf("    {\"data_hex\": \"%s\", \"crc32\": %" PRIu32 "}%s\n", hex(d, n).c_str(),
                crc32(d, n), i + 1 < 4 ? "," : "");
  }
  std::printf("  ],\n  \"cases\": [\n");
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& c = cases[ci];
    auto chunks = split_frame(c.data.data(), c.data.size(), c.boot_id, c.frame_seq, c.capture_ms,
                              c.clock_synced, c.chunk_data);
    if (chunks.empty()) {
      std::fprintf(stderr, "case %s: cannot split\n", c.name);
      return 1;
    }
    std::printf("    {\n      \"name\": \"%s\",\n", c.name);
    std::printf("      \"boot_id\": %" PRIu32 ",\n      \"frame_seq\": %" PRIu32 ",\n", c.boot_id,
                c.frame_seq);
    std::printf("      \"capture_ms\": %" PRIu64 ",\n      \"clock_synced\": %s,\n", c.capture_ms,
                c.clock_synced ? "true" : "false");
    std::printf("      \"chunk_data\": %zu,\n", c.chunk_data);
    std::printf("      \"frame_crc32\": %" PRIu32 ",\n", crc32(c.data.data(), c.data.size()));
    std::printf("      \"jpeg_hex\": \"%s\",\n", hex(c.data.data(), c.data.size()).c_str());
    std::printf("      \"chunks_hex\": [\n");
    for (size_t i = 0; i < chunks.size(); ++i)
      std::printf("        \"%s\"%s\n", hex(chunks[i].data(), chunks[i].size()).c_str(),
                  i + 1 < chunks.size() ? "," : "");
    std::printf("      ]\n    }%s\n", ci + 1 < cases.size() ? "," : "");
  }
  std::printf("  ]\n}\n");
  return 0;
}
