#include <cstdio>
#include <cstring>

#include "tinytest.h"

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int passed = 0, failed = 0;
  for (const auto& c : tinytest::registry()) {
    if (filter != nullptr && std::strstr(c.name, filter) == nullptr) continue;
    tinytest::current_failures() = 0;
    c.fn();
    if (tinytest::current_failures() == 0) {
      ++passed;
    } else {
      ++failed;
      std::fprintf(stderr, "FAIL %s\n", c.name);
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
