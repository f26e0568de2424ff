#include "camlink/bytes.h"

#include <cstdlib>
#include <cstring>

namespace camlink {
namespace {

void* default_alloc(size_t n) { return std::malloc(n); }
void default_release(void* p) { std::free(p); }

Allocator g_alloc{default_alloc, default_release};

}  // namespace

void set_frame_allocator(Allocator a) {
  if (a.alloc != nullptr && a.release != nullptr) g_alloc = a;
}

Allocator frame_allocator() { return g_alloc; }

bool Bytes::allocate(size_t n) {
  reset();
  if (n == 0) return false;
  void* p = g_alloc.alloc(n);
  if (p == nullptr) return false;
  p_ = static_cast<uint8_t*>(p);
  n_ = n;
  rel_ = g_alloc.release;
  return true;
}

bool Bytes::assign(const uint8_t* src, size_t n) {
  if (!allocate(n)) return false;
  std::memcpy(p_, src, n);
  return true;
}

void Bytes::reset() {
  if (p_ != nullptr && rel_ != nullptr) rel_(p_);
  p_ = nullptr;
  n_ = 0;
}

}  // namespace camlink
