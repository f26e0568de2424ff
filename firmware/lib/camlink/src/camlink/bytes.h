// A move-only owning byte buffer whose memory comes from a pluggable allocator,
// so the ESP32 build can put frame copies in PSRAM (heap_caps_malloc) while the
// host uses malloc.
#pragma once

#include <cstddef>
#include <cstdint>

namespace camlink {

struct Allocator {
  void* (*alloc)(size_t n);
  void (*release)(void* p);
};

/// Allocator used by every Bytes created afterwards (default: malloc/free).
void set_frame_allocator(Allocator a);
Allocator frame_allocator();

class Bytes {
 public:
  Bytes() = default;
  ~Bytes() { reset(); }
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
  Bytes(Bytes&& o) noexcept : p_(o.p_), n_(o.n_), rel_(o.rel_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  Bytes& operator=(Bytes&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = o.p_;
      n_ = o.n_;
      rel_ = o.rel_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }

  /// Allocate n bytes (contents undefined). False when out of memory or n == 0.
  bool allocate(size_t n);
  /// Allocate and copy.
  bool assign(const uint8_t* src, size_t n);
  /// Shrink the logical size (memory is kept).
  void truncate(size_t n) {
    if (n < n_) n_ = n;
  }
  void reset();

  uint8_t* data() { return p_; }
  const uint8_t* data() const { return p_; }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }

 private:
  uint8_t* p_ = nullptr;
  size_t n_ = 0;
  void (*rel_)(void*) = nullptr;
};

}  // namespace camlink
