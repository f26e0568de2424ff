#include "camlink/backoff.h"

namespace camlink {

Backoff::Backoff(uint32_t base_ms, uint32_t max_ms, Rng& rng)
    : base_(base_ms == 0 ? 1 : base_ms), max_(max_ms < base_ms ? base_ms : max_ms), rng_(rng) {}

uint32_t Backoff::current_cap_ms() const {
  uint64_t cap = base_;
  for (uint32_t i = 0; i < attempt_ && cap < max_; ++i) cap <<= 1;
  if (cap > max_) cap = max_;
  return static_cast<uint32_t>(cap);
}

uint32_t Backoff::next_delay_ms() {
  uint32_t cap = current_cap_ms();
  if (attempt_ < 64) ++attempt_;
  uint32_t half = cap / 2;
  uint32_t span = cap - half;  // delay in [half, cap]
  return half + static_cast<uint32_t>(rng_.next_u32() % (static_cast<uint64_t>(span) + 1));
}

}  // namespace camlink
