// CRC-32, chunk framing, JPEG check.
#include <cstring>
#include <string>

#include "camlink/chunk.h"
#include "camlink/crc32.h"
#include "camlink/jpeg.h"
#include "fakes.h"
#include "tinytest.h"

using namespace camlink;

TEST(crc32_known_values) {
  const char* s = "123456789";
  CHECK_EQ(crc32(reinterpret_cast<const uint8_t*>(s), 9), 0xCBF43926u);
  CHECK_EQ(crc32(nullptr, 0), 0u);
  const char* q = "The quick brown fox jumps over the lazy dog";
  CHECK_EQ(crc32(reinterpret_cast<const uint8_t*>(q), std::strlen(q)), 0x414FA339u);
}

TEST(crc32_incremental_equals_whole) {
  auto v = fakes::make_jpeg(10000, 7);
  uint32_t whole = crc32(v.data(), v.size());
  uint32_t c = 0;
  for (size_t off = 0; off < v.size(); off += 333) {
    size_t n = std::min<size_t>(333, v.size() - off);
    c = crc32_update(c, v.data() + off, n);
  }
  CHECK_EQ(c, whole);
}

TEST(header_layout_is_little_endian_36_bytes) {
  ChunkHeader h;
  h.flags = 1;
  h.boot_id = 0x04030201u;
  h.frame_seq = 0x08070605u;
  h.chunk_index = 0x0A09;
  h.chunk_count = 0x0C0B;
  h.frame_len = 0x100F0E0Du;
  h.frame_crc32 = 0x14131211u;
  h.offset = 0x18171615u;
  h.capture_ms = 0x201F1E1D1C1B1A19ull;
  uint8_t out[kHeaderLen];
  pack_header(h, out);
  const uint8_t expect[kHeaderLen] = {
      0x43, 0x46, 0x01, 0x01, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
      0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0x13, 0x14,
      0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F, 0x20};
  CHECK(std::memcmp(out, expect, kHeaderLen) == 0);
  ChunkHeader r = read_header(out);
  CHECK_EQ(r.boot_id, h.boot_id);
  CHECK_EQ(r.frame_seq, h.frame_seq);
  CHECK_EQ(r.chunk_index, h.chunk_index);
  CHECK_EQ(r.chunk_count, h.chunk_count);
  CHECK_EQ(r.frame_len, h.frame_len);
  CHECK_EQ(r.frame_crc32, h.frame_crc32);
  CHECK_EQ(r.offset, h.offset);
  CHECK_EQ(r.capture_ms, h.capture_ms);
  CHECK_EQ(r.flags, 1);
  CHECK_EQ(r.version, 1);
}

TEST(chunk_count_edges) {
  CHECK_EQ(chunk_count_for(0, 8192), 0u);
  CHECK_EQ(chunk_count_for(1, 0), 0u);
  CHECK_EQ(chunk_count_for(1, 8192), 1u);
  CHECK_EQ(chunk_count_for(8192, 8192), 1u);
  CHECK_EQ(chunk_count_for(8193, 8192), 2u);
  CHECK_EQ(chunk_count_for(65535, 1), 65535u);
  CHECK_EQ(chunk_count_for(65536, 1), 0u);
}

TEST(split_frame_covers_data_exactly) {
  auto v = fakes::make_jpeg(20000, 3);
  auto chunks = split_frame(v.data(), v.size(), 0xDEADBEEF, 41, 1795515300123ull, true, 8192);
  REQUIRE(chunks.size() == 3);
  std::vector<uint8_t> all;
  for (size_t i = 0; i < chunks.size(); ++i) {
    ChunkHeader h;
    const uint8_t* d;
    size_t n;
    REQUIRE(unpack_chunk(chunks[i].data(), chunks[i].size(), &h, &d, &n) == DecodeError::kNone);
    CHECK_EQ(h.chunk_index, i);
    CHECK_EQ(h.chunk_count, 3);
    CHECK_EQ(h.offset, i * 8192);
    CHECK_EQ(h.frame_len, 20000u);
    CHECK_EQ(h.frame_crc32, crc32(v.data(), v.size()));
    CHECK_EQ(h.boot_id, 0xDEADBEEFu);
    CHECK_EQ(h.frame_seq, 41u);
    CHECK_EQ(h.capture_ms, 1795515300123ull);
    CHECK_EQ(h.flags, kFlagClockSynced);
    CHECK_EQ(n, i < 2 ? 8192u : 20000u - 16384u);
    all.insert(all.end(), d, d + n);
  }
  CHECK(all == v);
  CHECK(split_frame(v.data(), 0, 0, 0, 0, false, 8192).empty());
  CHECK(split_frame(v.data(), v.size(), 0, 0, 0, false, 0).empty());
}

TEST(unpack_rejects_each_contract_violation) {
  auto v = fakes::make_jpeg(100, 1);
  auto good = split_frame(v.data(), v.size(), 1, 2, 3, false, 64)[1];
  CHECK(unpack_chunk(good.data(), good.size(), nullptr, nullptr, nullptr) == DecodeError::kNone);
  CHECK(unpack_chunk(good.data(), 35, nullptr, nullptr, nullptr) == DecodeError::kShortHeader);
  CHECK(unpack_chunk(good.data(), 36, nullptr, nullptr, nullptr) == DecodeError::kEmptyData);
  auto bad = good;
  bad[0] = 'X';
  CHECK(unpack_chunk(bad.data(), bad.size(), nullptr, nullptr, nullptr) == DecodeError::kBadMagic);
  bad = good;
  bad[2] = 2;
  CHECK(unpack_chunk(bad.data(), bad.size(), nullptr, nullptr, nullptr) == DecodeError::kBadVersion);
  bad = good;
  bad[3] = 0x02;
  CHECK(unpack_chunk(bad.data(), bad.size(), nullptr, nullptr, nullptr) == DecodeError::kBadFlags);
  bad = good;
  bad[12] = 2;  // index 2 of count 2
  CHECK(unpack_chunk(bad.data(), bad.size(), nullptr, nullptr, nullptr) ==
        DecodeError::kBadChunkIndex);
  bad = good;
  bad[14] = 0;  // count 0
  CHECK(unpack_chunk(bad.data(), bad.size(), nullptr, nullptr, nullptr) ==
        DecodeError::kBadChunkIndex);
  bad = good;
  std::memset(bad.data() + 16, 0, 4);  // frame_len 0
  CHECK(unpack_chunk(bad.data(), bad.size(), nullptr, nullptr, nullptr) ==
        DecodeError::kBadFrameLen);
  bad = good;
  bad[24] = 65;  // offset 65 + 36 bytes > 100
  CHECK(unpack_chunk(bad.data(), bad.size(), nullptr, nullptr, nullptr) ==
        DecodeError::kDataOverrun);
  CHECK_EQ(std::string(decode_error_name(DecodeError::kDataOverrun)), std::string("data_overrun"));
  CHECK_EQ(std::string(decode_error_name(DecodeError::kShortHeader)), std::string("short_header"));
}

TEST(jpeg_checks) {
  const uint8_t ok[] = {0xFF, 0xD8, 0xFF, 0xD9};
  const uint8_t short3[] = {0xFF, 0xD8, 0xD9};
  const uint8_t no_eoi[] = {0xFF, 0xD8, 0x00, 0x01};
  const uint8_t no_soi[] = {0x00, 0xD8, 0xFF, 0xD9};
  CHECK(looks_like_jpeg(ok, 4));
  CHECK(!looks_like_jpeg(short3, 3));
  CHECK(!looks_like_jpeg(no_eoi, 4));
  CHECK(!looks_like_jpeg(no_soi, 4));
  CHECK(!looks_like_jpeg(nullptr, 0));
  const uint8_t padded[] = {0xFF, 0xD8, 0x11, 0xFF, 0xD9, 0x00, 0x00, 0x00};
  CHECK_EQ(jpeg_trimmed_len(padded, sizeof padded), 5u);
  CHECK_EQ(jpeg_trimmed_len(ok, 4), 4u);
  CHECK_EQ(jpeg_trimmed_len(no_eoi, 4), 0u);
  CHECK_EQ(jpeg_trimmed_len(no_soi, 4), 0u);
  const uint8_t garbage_tail[] = {0xFF, 0xD8, 0x11, 0xFF, 0xD9, 0x00, 0x07};
  CHECK_EQ(jpeg_trimmed_len(garbage_tail, sizeof garbage_tail), 0u);
  std::vector<uint8_t> long_pad(200, 0);
  long_pad[0] = 0xFF; long_pad[1] = 0xD8; long_pad[2] = 0xFF; long_pad[3] = 0xD9;
  CHECK_EQ(jpeg_trimmed_len(long_pad.data(), long_pad.size()), 0u);  // more than 64 pad bytes
}
