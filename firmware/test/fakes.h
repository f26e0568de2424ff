// Test doubles for the core's interfaces, plus a receiver that reassembles
// frames from chunk payloads with the core's own decoder (as the ingestor does).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "camlink/bytes.h"
#include "camlink/chunk.h"
#include "camlink/crc32.h"
#include "camlink/interfaces.h"

namespace fakes {

class Clock : public camlink::Clock {
 public:
  uint64_t now = 1000;
  bool synced = false;
  uint64_t wall_offset = 1795515300000ull;  // wall = now + offset when synced
  uint64_t mono_ms() override { return now; }
  bool wall_ms(uint64_t* out) override {
    if (!synced) return false;
    *out = now + wall_offset;
    return true;
  }
};

struct Published {
  int mid;
  std::string topic;
  std::vector<uint8_t> payload;
  int qos;
  bool retain;
};

class Mqtt : public camlink::MqttPublisher {
 public:
  std::vector<Published> log;    // every publish, in order
  std::deque<int> unacked;       // mids not yet acknowledged, in order
  int next_mid = 1;
  int fail_next = 0;             // fail this many publish() calls

  int publish(const char* topic, const uint8_t* p, size_t n, int qos, bool retain) override {
    if (fail_next > 0) {
      --fail_next;
      return -1;
    }
    int mid = next_mid++;
    log.push_back({mid, topic, std::vector<uint8_t>(p, p + n), qos, retain});
    unacked.push_back(mid);
    return mid;
  }
  std::vector<const Published*> on(const std::string& suffix) const {
    std::vector<const Published*> r;
    for (const auto& m : log)
      if (m.topic.size() >= suffix.size() &&
          m.topic.compare(m.topic.size() - suffix.size(), suffix.size(), suffix) == 0)
        r.push_back(&m);
    return r;
  }
  const Published* by_mid(int mid) const {
    for (const auto& m : log)
      if (m.mid == mid) return &m;
    return nullptr;
  }
};

class Camera : public camlink::Camera {
 public:
  std::deque<std::vector<uint8_t>> frames;  // captured in order; empty = capture error
  int applied = 0;
  bool fail_apply = false;
  camlink::CameraSettings last;
  bool capture(camlink::Bytes* out) override {
    if (frames.empty()) return false;
    std::vector<uint8_t> f = std::move(frames.front());
    frames.pop_front();
    if (f.empty()) return false;
    return out->assign(f.data(), f.size());
  }
  bool apply(const camlink::CameraSettings& s, std::string* err) override {
    if (fail_apply) {
      *err = "sensor refused";
      return false;
    }
    ++applied;
    last = s;
    return true;
  }
};

class Sys : public camlink::SystemInfo {
 public:
  int rssi() override { return -61; }
  uint32_t heap_free() override { return 123456; }
  uint32_t psram_free() override { return 3456789; }
};

/// Deterministic pseudo-JPEG: SOI, n-4 pseudo-random bytes, EOI.
inline std::vector<uint8_t> make_jpeg(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n < 4 ? 4 : n);
  uint32_t s = seed * 2654435761u + 1;
  for (auto& b : v) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    b = static_cast<uint8_t>(s);
  }
  v[0] = 0xFF;
  v[1] = 0xD8;
  v[v.size() - 2] = 0xFF;
  v[v.size() - 1] = 0xD9;
  return v;
}

/// Reassembles frames like the ingestor: ignores duplicates, checks coverage and CRC.
class Receiver {
 public:
  struct Frame {
    camlink::ChunkHeader h;
    std::map<uint16_t, std::vector<uint8_t>> parts;
  };
  std::map<std::pair<uint32_t, uint32_t>, Frame> partial;
  std::vector<std::tuple<uint32_t, uint32_t, std::vector<uint8_t>, camlink::ChunkHeader>> complete;
  int duplicates = 0;
  int errors = 0;

  /// The ingestor's partial-frame timeout: forget every incomplete frame.
  size_t expire() {
    size_t n = partial.size();
    partial.clear();
    return n;
  }

  void feed(const std::vector<uint8_t>& payload) {
    camlink::ChunkHeader h;
    const uint8_t* d = nullptr;
    size_t n = 0;
    if (camlink::unpack_chunk(payload.data(), payload.size(), &h, &d, &n) !=
        camlink::DecodeError::kNone) {
      ++errors;
      return;
    }
    auto key = std::make_pair(h.boot_id, h.frame_seq);
    for (const auto& c : complete)
      if (std::get<0>(c) == h.boot_id && std::get<1>(c) == h.frame_seq) {
        ++duplicates;
        return;
      }
    Frame& f = partial[key];
    if (f.parts.empty()) f.h = h;
    if (f.h.frame_len != h.frame_len || f.h.frame_crc32 != h.frame_crc32 ||
        f.h.chunk_count != h.chunk_count || f.h.capture_ms != h.capture_ms ||
        f.h.flags != h.flags) {
      ++errors;
      return;
    }
    if (f.parts.count(h.chunk_index)) {
      ++duplicates;
      return;
    }
    f.parts[h.chunk_index] = std::vector<uint8_t>(d, d + n);
    if (f.parts.size() == h.chunk_count) {
      std::vector<uint8_t> all;
      // Chunk i starts at offset i * chunk_data: index order is offset order.
      for (auto& p : f.parts) all.insert(all.end(), p.second.begin(), p.second.end());
      if (all.size() != h.frame_len || camlink::crc32(all.data(), all.size()) != h.frame_crc32) {
        ++errors;
      } else {
        complete.emplace_back(h.boot_id, h.frame_seq, std::move(all), f.h);
      }
      partial.erase(key);
    }
  }
};

}  // namespace fakes
