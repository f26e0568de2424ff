// Exponential backoff with "equal jitter": the n-th delay is drawn uniformly from
// [cap/2, cap] where cap = min(max, base * 2^n). The RNG is injected so tests are
// deterministic and the ESP32 can use its hardware RNG (esp_random).
#pragma once

#include <cstdint>

namespace camlink {

class Rng {
 public:
  virtual ~Rng() = default;
  virtual uint32_t next_u32() = 0;
};

/// Small deterministic xorshift32 (never seeded with 0).
class XorShiftRng : public Rng {
 public:
  explicit XorShiftRng(uint32_t seed) : s_(seed == 0 ? 0x9E3779B9u : seed) {}
  uint32_t next_u32() override {
    s_ ^= s_ << 13;
    s_ ^= s_ >> 17;
    s_ ^= s_ << 5;
    return s_;
  }

 private:
  uint32_t s_;
};

class Backoff {
 public:
  Backoff(uint32_t base_ms, uint32_t max_ms, Rng& rng);

  /// Delay before the next attempt; grows with every call until reset().
  uint32_t next_delay_ms();
  /// Call after a success.
  void reset() { attempt_ = 0; }
  uint32_t attempts() const { return attempt_; }
  /// The cap (before jitter) the next call will use.
  uint32_t current_cap_ms() const;

 private:
  uint32_t base_;
  uint32_t max_;
  Rng& rng_;
  uint32_t attempt_ = 0;
};

}  // namespace camlink
