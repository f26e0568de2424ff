#include "camlink/json.h"

#include <cstdio>

namespace camlink {

void json_escape_into(std::string& out, const char* v) {
  if (v == nullptr) return;
  for (const unsigned char* p = reinterpret_cast<const unsigned char*>(v); *p; ++p) {
    unsigned char c = *p;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
}

void JsonWriter::key(const char* k) {
  if (!first_) s_ += ',';
  first_ = false;
  quoted(k);
  s_ += ':';
}

void JsonWriter::quoted(const char* v) {
  s_ += '"';
  json_escape_into(s_, v);
  s_ += '"';
}

JsonWriter& JsonWriter::str(const char* k, const char* v) {
  key(k);
  quoted(v == nullptr ? "" : v);
  return *this;
}

JsonWriter& JsonWriter::u64(const char* k, uint64_t v) {
  key(k);
  char buf[24];
  std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(v));
  s_ += buf;
  return *this;
}

JsonWriter& JsonWriter::i64(const char* k, int64_t v) {
  key(k);
  char buf[24];
  std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
  s_ += buf;
  return *this;
}

JsonWriter& JsonWriter::boolean(const char* k, bool v) {
  key(k);
  s_ += v ? "true" : "false";
  return *this;
}

JsonWriter& JsonWriter::null(const char* k) {
  key(k);
  s_ += "null";
  return *this;
}

std::string JsonWriter::finish() {
  s_ += '}';
  std::string out;
  out.swap(s_);
  s_ = "{";
  first_ = true;
  return out;
}

namespace {

class Reader {
 public:
  Reader(const char* p, size_t n) : p_(p), end_(p + n) {}

  void ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  bool eof() const { return p_ >= end_; }
  char peek() const { return p_ < end_ ? *p_ : '\0'; }
  bool eat(char c) {
    if (p_ < end_ && *p_ == c) {
      ++p_;
      return true;
    }
    return false;
  }
  bool literal(const char* lit) {
    const char* q = p_;
    for (; *lit; ++lit, ++q)
      if (q >= end_ || *q != *lit) return false;
    p_ = q;
    return true;
  }

  static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // Precondition: the opening quote was consumed.
  bool string(std::string& out, const char** err) {
    out.clear();
    while (true) {
      if (p_ >= end_) return fail(err, "unterminated string");
      unsigned char c = static_cast<unsigned char>(*p_++);
      if (c == '"') return true;
      if (c < 0x20) return fail(err, "control character in string");
      if (c == '\\') {
        if (p_ >= end_) return fail(err, "unterminated string");
        char e = *p_++;
        switch (e) {
          case '"': c = '"'; break;
          case '\\': c = '\\'; break;
          case '/': c = '/'; break;
          case 'b': c = '\b'; break;
          case 'f': c = '\f'; break;
          case 'n': c = '\n'; break;
          case 'r': c = '\r'; break;
          case 't': c = '\t'; break;
          case 'u': {
            if (end_ - p_ < 4) return fail(err, "bad \\u escape");
            int v = 0;
            for (int k = 0; k < 4; ++k) {
              int h = hexval(p_[k]);
              if (h < 0) return fail(err, "bad \\u escape");
              v = (v << 4) | h;
            }
            p_ += 4;
            if (v == 0 || v > 0x7F) return fail(err, "non-ASCII \\u escape not supported");
            c = static_cast<unsigned char>(v);
            break;
          }
          default: return fail(err, "bad escape");
        }
      }
      if (out.size() >= kMaxJsonString) return fail(err, "string too long");
      out += static_cast<char>(c);
    }
  }

  bool integer(int64_t& out, const char** err) {
    bool neg = eat('-');
    if (p_ >= end_ || *p_ < '0' || *p_ > '9') return fail(err, "bad number");
    if (*p_ == '0' && p_ + 1 < end_ && p_[1] >= '0' && p_[1] <= '9')
      return fail(err, "leading zero");
    uint64_t v = 0;
    const uint64_t limit = neg ? 9223372036854775808ull : 9223372036854775807ull;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      uint64_t d = static_cast<uint64_t>(*p_ - '0');
      if (v > (limit - d) / 10) return fail(err, "number out of range");
      v = v * 10 + d;
      ++p_;
    }
    if (p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E'))
      return fail(err, "only integers are accepted");
    if (neg) {
      out = v == 9223372036854775808ull ? INT64_MIN : -static_cast<int64_t>(v);
    } else {
      out = static_cast<int64_t>(v);
    }
    return true;
  }

  static bool fail(const char** err, const char* msg) {
    *err = msg;
    return false;
  }

 private:
  const char* p_;
  const char* end_;
};

}  // namespace

bool parse_flat_object(const char* text, size_t len, std::vector<JsonMember>& out,
                       const char** err) {
  static const char* dummy;
  if (err == nullptr) err = &dummy;
  *err = nullptr;
  out.clear();
  if (text == nullptr || len == 0) return Reader::fail(err, "empty payload");
  if (len > kMaxJsonInput) return Reader::fail(err, "payload too large");
  Reader r(text, len);
  r.ws();
  if (!r.eat('{')) return Reader::fail(err, "not a JSON object");
  r.ws();
  if (!r.eat('}')) {
    while (true) {
      r.ws();
      if (!r.eat('"')) return Reader::fail(err, "expected key");
      JsonMember m;
      if (!r.string(m.key, err)) return false;
      for (const auto& prev : out)
        if (prev.key == m.key) return Reader::fail(err, "duplicate key");
      r.ws();
      if (!r.eat(':')) return Reader::fail(err, "expected ':'");
      r.ws();
      char c = r.peek();
      if (c == '"') {
        r.eat('"');
        m.value.type = JsonValue::Type::kString;
        if (!r.string(m.value.s, err)) return false;
      } else if (c == '-' || (c >= '0' && c <= '9')) {
        m.value.type = JsonValue::Type::kInt;
        if (!r.integer(m.value.i, err)) return false;
      } else if (r.literal("true")) {
        m.value.type = JsonValue::Type::kBool;
        m.value.b = true;
      } else if (r.literal("false")) {
        m.value.type = JsonValue::Type::kBool;
        m.value.b = false;
      } else if (r.literal("null")) {
        m.value.type = JsonValue::Type::kNull;
      } else if (c == '{' || c == '[') {
        return Reader::fail(err, "nested values not supported");
      } else {
        return Reader::fail(err, "bad value");
      }
      if (out.size() >= kMaxJsonMembers) return Reader::fail(err, "too many members");
      out.push_back(std::move(m));
      r.ws();
      if (r.eat(',')) continue;
      if (r.eat('}')) break;
      return Reader::fail(err, "expected ',' or '}'");
    }
  }
  r.ws();
  if (!r.eof()) return Reader::fail(err, "trailing data");
  return true;
}

}  // namespace camlink
