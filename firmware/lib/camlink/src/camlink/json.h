// Minimal JSON for the device: a writer for status messages and a strict,
// bounded reader for flat command objects. No exceptions, no recursion, no
// dynamic nesting: input over kMaxJsonInput bytes, more than kMaxJsonMembers
// members, strings over kMaxJsonString bytes, nested objects/arrays, fractions,
// exponents, duplicate keys and trailing garbage are all rejected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace camlink {

constexpr size_t kMaxJsonInput = 1024;
constexpr size_t kMaxJsonMembers = 32;
constexpr size_t kMaxJsonString = 128;

class JsonWriter {
 public:
  JsonWriter() { s_.reserve(512); s_ += '{'; }
  JsonWriter& str(const char* key, const char* v);
  JsonWriter& str(const char* key, const std::string& v) { return str(key, v.c_str()); }
  JsonWriter& u64(const char* key, uint64_t v);
  JsonWriter& i64(const char* key, int64_t v);
  JsonWriter& boolean(const char* key, bool v);
  JsonWriter& null(const char* key);
  /// Close the object and return the text.
  std::string finish();

 private:
  void key(const char* k);
  void quoted(const char* v);
  std::string s_;
  bool first_ = true;
};

/// Escape a string for JSON (without the surrounding quotes).
void json_escape_into(std::string& out, const char* v);

struct JsonValue {
  enum class Type : uint8_t { kString, kInt, kBool, kNull };
  Type type = Type::kNull;
  std::string s;
  int64_t i = 0;
  bool b = false;
};

struct JsonMember {
  std::string key;
  JsonValue value;
};

/// Parse a flat JSON object. On failure returns false and sets *err to a static
/// message (never null on failure).
bool parse_flat_object(const char* text, size_t len, std::vector<JsonMember>& out,
                       const char** err);

}  // namespace camlink
