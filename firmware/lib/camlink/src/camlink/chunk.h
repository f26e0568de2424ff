// Frame chunk framing, wire contract version 1 (docs/protocol.md).
//
// Every chunk is a 36-byte little-endian header followed by data:
//   0 magic "CF" | 2 version=1 | 3 flags (bit0 clock synced) | 4 boot_id u32
//   8 frame_seq u32 | 12 chunk_index u16 | 14 chunk_count u16 | 16 frame_len u32
//   20 frame_crc32 u32 | 24 offset u32 | 28 capture_ms u64 | 36 data...
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace camlink {

constexpr size_t kHeaderLen = 36;
constexpr uint8_t kMagic0 = 0x43;  // 'C'
constexpr uint8_t kMagic1 = 0x46;  // 'F'
constexpr uint8_t kVersion = 1;
constexpr uint8_t kFlagClockSynced = 0x01;
constexpr uint8_t kKnownFlags = kFlagClockSynced;
constexpr size_t kDefaultChunkData = 8 * 1024;
constexpr uint32_t kMaxChunks = 0xFFFF;

struct ChunkHeader {
  uint8_t version = kVersion;
  uint8_t flags = 0;
  uint32_t boot_id = 0;
  uint32_t frame_seq = 0;
  uint16_t chunk_index = 0;
  uint16_t chunk_count = 0;
  uint32_t frame_len = 0;
  uint32_t frame_crc32 = 0;
  uint32_t offset = 0;
  uint64_t capture_ms = 0;
};

/// Fields shared by every chunk of one frame.
struct FrameMeta {
  uint32_t boot_id = 0;
  uint32_t frame_seq = 0;
  uint8_t flags = 0;
  uint64_t capture_ms = 0;
  uint32_t frame_len = 0;
  uint32_t frame_crc32 = 0;
};

/// Why a payload was refused; names equal ingestor.protocol.RejectReason values.
enum class DecodeError : uint8_t {
  kNone = 0,
  kShortHeader,
  kBadMagic,
  kBadVersion,
  kBadFlags,
  kBadChunkIndex,
  kBadFrameLen,
  kEmptyData,
  kDataOverrun,
};

const char* decode_error_name(DecodeError e);

/// Write the 36-byte header (little-endian) into out.
void pack_header(const ChunkHeader& h, uint8_t* out);

/// Read a header without checks (needs kHeaderLen bytes).
ChunkHeader read_header(const uint8_t* in);

/// Decode and check one chunk on its own, as ingestor.protocol.unpack_chunk does.
/// On success sets *data / *data_len to the chunk data inside payload.
DecodeError unpack_chunk(const uint8_t* payload, size_t len, ChunkHeader* out,
                         const uint8_t** data, size_t* data_len);

/// Number of chunks for a frame; 0 when the frame is empty, chunk_data is 0,
/// or the count would exceed 65535.
uint32_t chunk_count_for(size_t frame_len, size_t chunk_data);

/// Build the payload of chunk `index` of a frame into out (resized to fit).
/// Returns false when index is out of range or the frame cannot be chunked.
bool build_chunk(const FrameMeta& meta, const uint8_t* frame, size_t chunk_data, uint32_t index,
                 std::vector<uint8_t>& out);

/// Split a whole frame into payloads (convenience for tests and vectors).
/// Computes frame_len and frame_crc32 from the data. Empty on error.
std::vector<std::vector<uint8_t>> split_frame(const uint8_t* frame, size_t len, uint32_t boot_id,
                                              uint32_t frame_seq, uint64_t capture_ms,
                                              bool clock_synced, size_t chunk_data);

}  // namespace camlink
