#include "camlink/chunk.h"

#include <cstring>

#include "camlink/crc32.h"

namespace camlink {
namespace {

void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t get16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (static_cast<uint16_t>(p[1]) << 8));
}
uint32_t get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

const char* decode_error_name(DecodeError e) {
  switch (e) {
    case DecodeError::kNone: return "none";
    case DecodeError::kShortHeader: return "short_header";
    case DecodeError::kBadMagic: return "bad_magic";
    case DecodeError::kBadVersion: return "bad_version";
    case DecodeError::kBadFlags: return "bad_flags";
    case DecodeError::kBadChunkIndex: return "bad_chunk_index";
    case DecodeError::kBadFrameLen: return "bad_frame_len";
    case DecodeError::kEmptyData: return "empty_data";
    case DecodeError::kDataOverrun: return "data_overrun";
  }
  return "unknown";
}

void pack_header(const ChunkHeader& h, uint8_t* out) {
  out[0] = kMagic0;
  out[1] = kMagic1;
  out[2] = h.version;
  out[3] = h.flags;
  put32(out + 4, h.boot_id);
  put32(out + 8, h.frame_seq);
  put16(out + 12, h.chunk_index);
  put16(out + 14, h.chunk_count);
  put32(out + 16, h.frame_len);
  put32(out + 20, h.frame_crc32);
  put32(out + 24, h.offset);
  put64(out + 28, h.capture_ms);
}

ChunkHeader read_header(const uint8_t* in) {
  ChunkHeader h;
  h.version = in[2];
  h.flags = in[3];
  h.boot_id = get32(in + 4);
  h.frame_seq = get32(in + 8);
  h.chunk_index = get16(in + 12);
  h.chunk_count = get16(in + 14);
  h.frame_len = get32(in + 16);
  h.frame_crc32 = get32(in + 20);
  h.offset = get32(in + 24);
  h.capture_ms = get64(in + 28);
  return h;
}

DecodeError unpack_chunk(const uint8_t* payload, size_t len, ChunkHeader* out,
                         const uint8_t** data, size_t* data_len) {
  if (payload == nullptr || len < kHeaderLen) return DecodeError::kShortHeader;
  if (payload[0] != kMagic0 || payload[1] != kMagic1) return DecodeError::kBadMagic;
  ChunkHeader h = read_header(payload);
  if (h.version != kVersion) return DecodeError::kBadVersion;
  if ((h.flags & ~kKnownFlags) != 0) return DecodeError::kBadFlags;
  if (h.chunk_count < 1 || h.chunk_index >= h.chunk_count) return DecodeError::kBadChunkIndex;
  if (h.frame_len < 1) return DecodeError::kBadFrameLen;
  size_t n = len - kHeaderLen;
  if (n == 0) return DecodeError::kEmptyData;
  if (static_cast<uint64_t>(h.offset) + n > h.frame_len) return DecodeError::kDataOverrun;
  if (out != nullptr) *out = h;
  if (data != nullptr) *data = payload + kHeaderLen;
  if (data_len != nullptr) *data_len = n;
  return DecodeError::kNone;
}

uint32_t chunk_count_for(size_t frame_len, size_t chunk_data) {
  if (frame_len == 0 || chunk_data == 0) return 0;
  if (static_cast<uint64_t>(frame_len) > 0xFFFFFFFFull) return 0;
  uint64_t count = (static_cast<uint64_t>(frame_len) + chunk_data - 1) / chunk_data;
  if (count > kMaxChunks) return 0;
  return static_cast<uint32_t>(count);
}

bool build_chunk(const FrameMeta& meta, const uint8_t* frame, size_t chunk_data, uint32_t index,
                 std::vector<uint8_t>& out) {
  uint32_t count = chunk_count_for(meta.frame_len, chunk_data);
  if (count == 0 || index >= count || frame == nullptr) return false;
  size_t off = static_cast<size_t>(index) * chunk_data;
  size_t n = meta.frame_len - off;
  if (n > chunk_data) n = chunk_data;
  ChunkHeader h;
  h.flags = meta.flags;
  h.boot_id = meta.boot_id;
  h.frame_seq = meta.frame_seq;
  h.chunk_index = static_cast<uint16_t>(index);
  h.chunk_count = static_cast<uint16_t>(count);
  h.frame_len = meta.frame_len;
  h.frame_crc32 = meta.frame_crc32;
  h.offset = static_cast<uint32_t>(off);
  h.capture_ms = meta.capture_ms;
  out.resize(kHeaderLen + n);
  pack_header(h, out.data());
  std::memcpy(out.data() + kHeaderLen, frame + off, n);
  return true;
}

std::vector<std::vector<uint8_t>> split_frame(const uint8_t* frame, size_t len, uint32_t boot_id,
                                              uint32_t frame_seq, uint64_t capture_ms,
                                              bool clock_synced, size_t chunk_data) {
  std::vector<std::vector<uint8_t>> out;
  uint32_t count = chunk_count_for(len, chunk_data);
  if (count == 0 || frame == nullptr) return out;
  FrameMeta meta;
  meta.boot_id = boot_id;
  meta.frame_seq = frame_seq;
  meta.flags = clock_synced ? kFlagClockSynced : 0;
  meta.capture_ms = capture_ms;
  meta.frame_len = static_cast<uint32_t>(len);
  meta.frame_crc32 = crc32(frame, len);
  out.resize(count);
  for (uint32_t i = 0; i < count; ++i) build_chunk(meta, frame, chunk_data, i, out[i]);
  return out;
}

}  // namespace camlink
