// Test-only generic JSON reader (objects, arrays, strings, non-negative
// integers, booleans, null) for the cross-language vector files. Not for the
// device: the firmware uses the bounded flat reader in camlink/json.h.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mini_json {

struct Value {
  enum class T { Null, Bool, UInt, Str, Arr, Obj } t = T::Null;
  bool b = false;
  uint64_t u = 0;
  std::string s;
  std::vector<Value> a;
  std::map<std::string, Value> o;

  const Value& operator[](const std::string& k) const {
    static const Value null_value;
    auto it = o.find(k);
    return it == o.end() ? null_value : it->second;
  }
};

class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}
  bool parse(Value& out, std::string& err) {
    if (!value(out, 0)) {
      err = err_ + " at " + std::to_string(i_);
      return false;
    }
    ws();
    if (i_ != s_.size()) {
      err = "trailing data";
      return false;
    }
    return true;
  }

 private:
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t'))
      ++i_;
  }
  bool fail(const char* m) {
    err_ = m;
    return false;
  }
  bool lit(const char* l) {
    size_t n = std::char_traits<char>::length(l);
    if (s_.compare(i_, n, l) != 0) return false;
    i_ += n;
    return true;
  }
  bool str(std::string& out) {
    ++i_;  // opening quote
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c == '\\') {
        if (i_ >= s_.size()) return fail("bad escape");
        char e = s_[i_++];
        switch (e) {
          case 'n': c = '\n'; break;
          case 't': c = '\t'; break;
          case 'r': c = '\r'; break;
          case 'b': c = '\b'; break;
          case 'f': c = '\f'; break;
          case 'u': {
            if (i_ + 4 > s_.size()) return fail("bad \\u");
            c = static_cast<char>(std::stoi(s_.substr(i_, 4), nullptr, 16));
            i_ += 4;
            break;
          }
          default: c = e;
        }
      }
      out += c;
    }
    if (i_ >= s_.size()) return fail("unterminated string");
    ++i_;
    return true;
  }
  bool value(Value& v, int depth) {
    if (depth > 32) return fail("too deep");
    ws();
    if (i_ >= s_.size()) return fail("unexpected end");
    char c = s_[i_];
    if (c == '{') {
      v.t = Value::T::Obj;
      ++i_;
      ws();
      if (i_ < s_.size() && s_[i_] == '}') {
        ++i_;
        return true;
      }
      while (true) {
        ws();
        if (i_ >= s_.size() || s_[i_] != '"') return fail("expected key");
        std::string k;
        if (!str(k)) return false;
        ws();
        if (i_ >= s_.size() || s_[i_] != ':') return fail("expected ':'");
        ++i_;
        if (!value(v.o[k], depth + 1)) return false;
        ws();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < s_.size() && s_[i_] == '}') {
          ++i_;
          return true;
        }
        return fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.t = Value::T::Arr;
      ++i_;
      ws();
      if (i_ < s_.size() && s_[i_] == ']') {
        ++i_;
        return true;
      }
      while (true) {
        v.a.emplace_back();
        if (!value(v.a.back(), depth + 1)) return false;
        ws();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < s_.size() && s_[i_] == ']') {
          ++i_;
          return true;
        }
        return fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.t = Value::T::Str;
      return str(v.s);
    }
    if (c >= '0' && c <= '9') {
      v.t = Value::T::UInt;
      uint64_t u = 0;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
        uint64_t d = static_cast<uint64_t>(s_[i_] - '0');
        if (u > (UINT64_MAX - d) / 10) return fail("number too large");
        u = u * 10 + d;
        ++i_;
      }
      v.u = u;
      return true;
    }
    if (lit("true")) {
      v.t = Value::T::Bool;
      v.b = true;
      return true;
    }
    if (lit("false")) {
      v.t = Value::T::Bool;
      return true;
    }
    if (lit("null")) return true;
    return fail("unsupported value");
  }

  const std::string& s_;
  size_t i_ = 0;
  std::string err_;
};

inline std::vector<uint8_t> unhex(const std::string& h) {
  std::vector<uint8_t> out;
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (h.size() % 2 != 0) return out;
  for (size_t i = 0; i < h.size(); i += 2) {
    int a = nib(h[i]), b = nib(h[i + 1]);
    if (a < 0 || b < 0) return {};
    out.push_back(static_cast<uint8_t>(a * 16 + b));
  }
  return out;
}

inline std::string hex(const uint8_t* d, size_t n) {
  static const char* k = "0123456789abcdef";
  std::string s;
  s.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    s += k[d[i] >> 4];
    s += k[d[i] & 15];
  }
  return s;
}

}  // namespace mini_json
