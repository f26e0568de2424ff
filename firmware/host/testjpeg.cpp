#include "testjpeg.h"

#include <algorithm>

namespace testjpeg {
namespace {

// Annex K.3 luminance DC table (categories 0..11).
const uint8_t kDcBits[16] = {0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0};
const uint8_t kDcVals[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
// A minimal AC table: EOB (0x00) = "0", ZRL (0xF0) = "10". Only EOB is used.
const uint8_t kAcBits[16] = {1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
const uint8_t kAcVals[2] = {0x00, 0xF0};

struct Code {
  uint16_t bits = 0;
  uint8_t len = 0;
};

// Canonical Huffman codes (JPEG Annex C) indexed by symbol.
std::vector<Code> canonical(const uint8_t* bits, const uint8_t* vals) {
  std::vector<Code> out(256);
  uint16_t code = 0;
  size_t k = 0;
  for (int len = 1; len <= 16; ++len) {
    for (int i = 0; i < bits[len - 1]; ++i) {
      out[vals[k++]] = Code{code, static_cast<uint8_t>(len)};
      ++code;
    }
    code = static_cast<uint16_t>(code << 1);
  }
  return out;
}

class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>& out) : out_(out) {}
  void put(uint32_t bits, int len) {
    for (int i = len - 1; i >= 0; --i) {
      acc_ = static_cast<uint8_t>((acc_ << 1) | ((bits >> i) & 1u));
      if (++n_ == 8) emit();
    }
  }
  void flush() {
    while (n_ != 0) put(1, 1);  // pad with 1-bits
  }

 private:
  void emit() {
    out_.push_back(acc_);
    if (acc_ == 0xFF) out_.push_back(0x00);  // byte stuffing
    acc_ = 0;
    n_ = 0;
  }
  std::vector<uint8_t>& out_;
  uint8_t acc_ = 0;
  int n_ = 0;
};

void marker(std::vector<uint8_t>& o, uint8_t m) {
  o.push_back(0xFF);
  o.push_back(m);
}
void u16(std::vector<uint8_t>& o, size_t v) {
  o.push_back(static_cast<uint8_t>(v >> 8));
  o.push_back(static_cast<uint8_t>(v));
}

void com(std::vector<uint8_t>& o, const std::string& text) {
  marker(o, 0xFE);
  u16(o, text.size() + 2);
  o.insert(o.end(), text.begin(), text.end());
}

}  // namespace

std::vector<uint8_t> make(int width, int height, uint32_t frame_no, const std::string& comment,
                          size_t pad_to) {
  int w = std::max(8, (width + 7) / 8 * 8);
  int h = std::max(8, (height + 7) / 8 * 8);
  int bw = w / 8, bh = h / 8;
  std::vector<uint8_t> o;
  o.reserve(static_cast<size_t>(bw * bh) + 1024 + pad_to);
  marker(o, 0xD8);
  // APP0 JFIF 1.01, no thumbnail.
  marker(o, 0xE0);
  u16(o, 16);
  const uint8_t jfif[] = {'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0};
  o.insert(o.end(), jfif, jfif + sizeof jfif);
  if (!comment.empty()) com(o, comment.substr(0, 65000));
  // DQT: table 0, DC quantiser 8 (so a flat block's coefficient is value-128).
  marker(o, 0xDB);
  u16(o, 67);
  o.push_back(0x00);
  o.push_back(8);
  for (int i = 1; i < 64; ++i) o.push_back(16);
  // SOF0: 8-bit, one component.
  marker(o, 0xC0);
  u16(o, 11);
  o.push_back(8);
  u16(o, static_cast<size_t>(h));
  u16(o, static_cast<size_t>(w));
  o.push_back(1);
  o.push_back(1);     // component id
  o.push_back(0x11);  // 1x1 sampling
  o.push_back(0);     // quant table 0
  // DHT: DC 0 and AC 0.
  marker(o, 0xC4);
  u16(o, 2 + 17 + sizeof kDcVals + 17 + sizeof kAcVals);
  o.push_back(0x00);
  o.insert(o.end(), kDcBits, kDcBits + 16);
  o.insert(o.end(), kDcVals, kDcVals + sizeof kDcVals);
  o.push_back(0x10);
  o.insert(o.end(), kAcBits, kAcBits + 16);
  o.insert(o.end(), kAcVals, kAcVals + sizeof kAcVals);
  // SOS.
  marker(o, 0xDA);
  u16(o, 8);
  o.push_back(1);
  o.push_back(1);
  o.push_back(0x00);
  o.push_back(0);
  o.push_back(63);
  o.push_back(0);

  std::vector<Code> dc = canonical(kDcBits, kDcVals);
  std::vector<Code> ac = canonical(kAcBits, kAcVals);
  BitWriter bw_out(o);
  int prev = 0;
  for (int by = 0; by < bh; ++by) {
    for (int bx = 0; bx < bw; ++bx) {
      int v = static_cast<int>((static_cast<uint32_t>(bx * 6 + by * 3) + frame_no * 5) & 0xFF);
      if (bx == static_cast<int>(frame_no % static_cast<uint32_t>(bw))) v = 250;  // moving bar
      if (by == 0 && bx < 32) v = ((frame_no >> (31 - bx)) & 1u) ? 255 : 0;  // frame number
      int coef = v - 128;  // quantised DC of a flat block
      int diff = coef - prev;
      prev = coef;
      int mag = diff < 0 ? -diff : diff;
      int cat = 0;
      while (mag >> cat) ++cat;
      bw_out.put(dc[static_cast<size_t>(cat)].bits, dc[static_cast<size_t>(cat)].len);
      if (cat > 0) {
        uint32_t extra = static_cast<uint32_t>(diff >= 0 ? diff : diff + (1 << cat) - 1);
        bw_out.put(extra, cat);
      }
      bw_out.put(ac[0x00].bits, ac[0x00].len);  // EOB
    }
  }
  bw_out.flush();
  marker(o, 0xD9);

  // Pad with COM segments (inserted after APP0) to reach pad_to bytes.
  if (pad_to > o.size() + 4) {
    std::vector<uint8_t> pad;
    size_t need = pad_to - o.size();
    uint32_t s = 0x9E3779B9u ^ frame_no;
    while (need >= 5) {
      size_t n = std::min<size_t>(need - 4, 65533);
      std::string text(n, ' ');
      for (auto& c : text) {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        c = static_cast<char>('A' + (s % 26));
      }
      com(pad, text);
      need -= n + 4;
    }
    o.insert(o.begin() + 20, pad.begin(), pad.end());  // after SOI (2) + APP0 (18)
  }
  return o;
}

}  // namespace testjpeg
