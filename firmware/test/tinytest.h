// A tiny test harness: TEST(name) { CHECK(...); CHECK_EQ(a, b); }
// Failures are counted (tests keep running); main prints "N passed, M failed".
#pragma once

#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace tinytest {

struct Case {
  const char* name;
  void (*fn)();
};

inline std::vector<Case>& registry() {
  static std::vector<Case> r;
  return r;
}

inline int& current_failures() {
  static int n = 0;
  return n;
}

struct Registrar {
  Registrar(const char* name, void (*fn)()) { registry().push_back({name, fn}); }
};

template <typename T>
std::string show(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
inline std::string show(unsigned char v) { return std::to_string(static_cast<unsigned>(v)); }
inline std::string show(bool v) { return v ? "true" : "false"; }

inline void fail(const char* file, int line, const std::string& msg) {
  ++current_failures();
  std::fprintf(stderr, "    %s:%d: %s\n", file, line, msg.c_str());
}

}  // namespace tinytest

#define TT_CAT2(a, b) a##b
#define TT_CAT(a, b) TT_CAT2(a, b)
#define TEST(name)                                                             \
  static void name();                                                          \
  static ::tinytest::Registrar TT_CAT(tt_reg_, name)(#name, &name);            \
  static void name()

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) ::tinytest::fail(__FILE__, __LINE__, "CHECK(" #cond ")");     \
  } while (0)

#define CHECK_EQ(a, b)                                                         \
  do {                                                                         \
    auto tt_a = (a);                                                           \
    auto tt_b = (b);                                                           \
    if (!(tt_a == tt_b))                                                       \
      ::tinytest::fail(__FILE__, __LINE__,                                     \
                       "CHECK_EQ(" #a ", " #b "): " + ::tinytest::show(tt_a) + \
                           " != " + ::tinytest::show(tt_b));                   \
  } while (0)

// Stop the current test (e.g. before dereferencing something that failed).
#define REQUIRE(cond)                                                          \
  do {                                                                         \
    if (!(cond)) {                                                             \
      ::tinytest::fail(__FILE__, __LINE__, "REQUIRE(" #cond ")");              \
      return;                                                                  \
    }                                                                          \
  } while (0)
