// Cross-language vectors: decode what the Python codec produced
// (tests/vectors/py_chunks_v1.json) and re-encode it byte for byte; and check
// the committed C++ vectors (chunks_v1.json) against the core.
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "camlink/chunk.h"
#include "camlink/crc32.h"
#include "mini_json.h"
#include "tinytest.h"

#ifndef CAMLINK_VECTORS_DIR
#define CAMLINK_VECTORS_DIR "../tests/vectors"
#endif

using namespace camlink;

namespace {

bool load(const std::string& name, mini_json::Value& root) {
  const char* env = std::getenv("CAMLINK_VECTORS_DIR");
  std::string path = std::string(env != nullptr ? env : CAMLINK_VECTORS_DIR) + "/" + name;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ::tinytest::fail(__FILE__, __LINE__, "cannot open " + path);
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  std::string err;
  if (!mini_json::Parser(text).parse(root, err)) {
    ::tinytest::fail(__FILE__, __LINE__, path + ": " + err);
    return false;
  }
  return true;
}

// Decode every chunk of every case, reassemble, and re-encode with the C++ core.
void check_cases(const mini_json::Value& root, const char* file) {
  const auto& cases = root["cases"].a;
  if (cases.size() < 5) ::tinytest::fail(__FILE__, __LINE__, std::string(file) + ": too few cases");
  for (const auto& c : cases) {
    std::string name = c["name"].s;
    std::vector<uint8_t> jpeg = mini_json::unhex(c["jpeg_hex"].s);
    uint32_t boot = static_cast<uint32_t>(c["boot_id"].u);
    uint32_t seq = static_cast<uint32_t>(c["frame_seq"].u);
    uint64_t cap = c["capture_ms"].u;
    bool synced = c["clock_synced"].b;
    size_t chunk = static_cast<size_t>(c["chunk_data"].u);
    CHECK_EQ(static_cast<uint64_t>(crc32(jpeg.data(), jpeg.size())), c["frame_crc32"].u);
    std::vector<uint8_t> rebuilt(jpeg.size(), 0);
    std::vector<bool> seen(jpeg.size(), false);
    const auto& chunks = c["chunks_hex"].a;
    for (size_t i = 0; i < chunks.size(); ++i) {
      std::vector<uint8_t> p = mini_json::unhex(chunks[i].s);
      ChunkHeader h;
      const uint8_t* d = nullptr;
      size_t n = 0;
      DecodeError e = unpack_chunk(p.data(), p.size(), &h, &d, &n);
      if (e != DecodeError::kNone) {
        ::tinytest::fail(__FILE__, __LINE__, name + ": " + decode_error_name(e));
        continue;
      }
      CHECK_EQ(h.chunk_index, i);
      CHECK_EQ(h.chunk_count, chunks.size());
      CHECK_EQ(h.boot_id, boot);
      CHECK_EQ(h.frame_seq, seq);
      CHECK_EQ(h.capture_ms, cap);
      CHECK_EQ(h.flags, synced ? kFlagClockSynced : 0);
      CHECK_EQ(h.frame_len, jpeg.size());
      CHECK_EQ(static_cast<uint64_t>(h.frame_crc32), c["frame_crc32"].u);
      for (size_t k = 0; k < n && h.offset + k < rebuilt.size(); ++k) {
        rebuilt[h.offset + k] = d[k];
        seen[h.offset + k] = true;
      }
    }
    bool covered = true;
    for (bool s : seen) covered = covered && s;
    if (!covered || rebuilt != jpeg)
      ::tinytest::fail(__FILE__, __LINE__, name + ": reassembly differs");
    auto mine = split_frame(jpeg.data(), jpeg.size(), boot, seq, cap, synced, chunk);
    if (mine.size() != chunks.size()) {
      ::tinytest::fail(__FILE__, __LINE__, name + ": chunk count differs");
      continue;
    }
    for (size_t i = 0; i < mine.size(); ++i)
      if (mini_json::hex(mine[i].data(), mine[i].size()) != chunks[i].s)
        ::tinytest::fail(__FILE__, __LINE__, name + ": chunk " + std::to_string(i) + " differs");
  }
  for (const auto& v : root["crc32"].a) {
    std::vector<uint8_t> d = mini_json::unhex(v["data_hex"].s);
    CHECK_EQ(static_cast<uint64_t>(crc32(d.data(), d.size())), v["crc32"].u);
  }
}

}  // namespace

TEST(vectors_from_python_decode_and_reencode_identically) {
  mini_json::Value root;
  if (!load("py_chunks_v1.json", root)) return;
  CHECK_EQ(root["version"].u, 1u);
  check_cases(root, "py_chunks_v1.json");
}

TEST(vectors_committed_cpp_file_matches_core) {
  mini_json::Value root;
  if (!load("chunks_v1.json", root)) return;
  check_cases(root, "chunks_v1.json");
}
