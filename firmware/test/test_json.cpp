// JSON writer/reader, commands, status.
#include <string>
#include <vector>

#include "camlink/command.h"
#include "camlink/json.h"
#include "camlink/status.h"
#include "tinytest.h"

using namespace camlink;

namespace {

bool parse(const std::string& s, std::vector<JsonMember>& m, std::string* err = nullptr) {
  const char* e = nullptr;
  bool ok = parse_flat_object(s.data(), s.size(), m, &e);
  if (err != nullptr) *err = e != nullptr ? e : "";
  return ok;
}

bool cmd(const std::string& s, Command* c, std::string* err) {
  return parse_command(reinterpret_cast<const uint8_t*>(s.data()), s.size(), c, err);
}

}  // namespace

TEST(json_writer_escapes) {
  JsonWriter w;
  std::string s = w.str("a", "q\"b\\n\n\x01").u64("n", 18446744073709551615ull).i64("i", -5)
                      .boolean("t", true).null("z").finish();
  CHECK_EQ(s, std::string("{\"a\":\"q\\\"b\\\\n\\n\\u0001\",\"n\":18446744073709551615,"
                          "\"i\":-5,\"t\":true,\"z\":null}"));
  std::vector<JsonMember> m;
  std::string err;
  CHECK(!parse(s, m, &err));  // the reader is int64: u64 max is out of its range
  CHECK_EQ(err, std::string("number out of range"));
  JsonWriter w2;
  s = w2.str("a", "q\"b\\n\n\x01").u64("n", 42).finish();
  REQUIRE(parse(s, m, &err));
  CHECK_EQ(m.size(), 2u);
  CHECK_EQ(m[0].value.s, std::string("q\"b\\n\n\x01"));
}

TEST(json_reader_accepts_flat_objects) {
  std::vector<JsonMember> m;
  REQUIRE(parse(" { \"cmd\" : \"set\" ,\"q\":-12, \"b\":false,\"n\":null,\"e\":\"\\u0041\\/\"}\n", m));
  REQUIRE(m.size() == 5);
  CHECK_EQ(m[0].key, std::string("cmd"));
  CHECK_EQ(m[0].value.s, std::string("set"));
  CHECK(m[1].value.type == JsonValue::Type::kInt);
  CHECK_EQ(m[1].value.i, -12);
  CHECK(m[2].value.type == JsonValue::Type::kBool);
  CHECK(!m[2].value.b);
  CHECK(m[3].value.type == JsonValue::Type::kNull);
  CHECK_EQ(m[4].value.s, std::string("A/"));
  CHECK(parse("{}", m));
  CHECK(m.empty());
  CHECK(parse("{\"x\":9223372036854775807}", m));
  CHECK(parse("{\"x\":-9223372036854775808}", m));
  CHECK_EQ(m[0].value.i, INT64_MIN);
}

TEST(json_reader_rejects_bad_input) {
  std::vector<JsonMember> m;
  std::string err;
  const char* bad[] = {
      "", "[]", "{", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{\"a\":1}x", "{\"a\":1.5}",
      "{\"a\":1e3}", "{\"a\":01}", "{\"a\":-}", "{\"a\":{}}", "{\"a\":[1]}", "{\"a\":tru}",
      "{\"a\":\"unterminated}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u00e9\"}", "{\"a\":\"\\u0000\"}",
      "{\"a\":1,\"a\":2}", "{\"a\":9223372036854775808}", "{'a':1}", "{\"a\":\"\t\"}",
  };
  for (const char* b : bad) {
    bool ok = parse(b, m, &err);
    if (ok) ::tinytest::fail(__FILE__, __LINE__, std::string("accepted: ") + b);
    CHECK(!err.empty());
  }
  std::string with_nul("{\"a\":1}\0", 8);
  CHECK(!parse(with_nul, m));
  std::string big = "{\"a\":\"" + std::string(kMaxJsonString + 1, 'x') + "\"}";
  CHECK(!parse(big, m, &err));
  CHECK_EQ(err, std::string("string too long"));
  std::string many = "{";
  for (size_t i = 0; i <= kMaxJsonMembers; ++i) many += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":1";
  many += "}";
  CHECK(!parse(many, m, &err));
  CHECK_EQ(err, std::string("too many members"));
  std::string huge = "{\"a\":\"" + std::string(kMaxJsonInput, ' ') + "\"}";
  CHECK(!parse(huge, m, &err));
  CHECK_EQ(err, std::string("payload too large"));
}

TEST(command_set_and_reboot) {
  Command c;
  std::string err;
  REQUIRE(cmd("{\"cmd\":\"set\",\"frame_size\":\"SVGA\",\"jpeg_quality\":12,\"interval_ms\":1000}",
              &c, &err));
  CHECK(c.type == CmdType::kSet);
  CHECK(c.has_frame_size && c.has_jpeg_quality && c.has_interval_ms);
  CHECK(c.frame_size == FrameSize::kSVGA);
  CHECK_EQ(c.jpeg_quality, 12);
  CHECK_EQ(c.interval_ms, 1000u);
  CameraSettings base;
  base.frame_size = FrameSize::kUXGA;
  base.jpeg_quality = 30;
  base.interval_ms = 5000;
  REQUIRE(cmd("{\"cmd\":\"set\",\"interval_ms\":250}", &c, &err));
  CameraSettings after = c.applied_to(base);
  CHECK(after.frame_size == FrameSize::kUXGA);
  CHECK_EQ(after.jpeg_quality, 30);
  CHECK_EQ(after.interval_ms, 250u);
  REQUIRE(cmd("{\"cmd\":\"reboot\"}", &c, &err));
  CHECK(c.type == CmdType::kReboot);
  REQUIRE(cmd("{\"cmd\":\"status\"}", &c, &err));
  CHECK(c.type == CmdType::kStatus);
  for (const char* n : {"QQVGA", "QCIF", "HQVGA", "240X240", "QVGA", "CIF", "HVGA", "VGA", "SVGA",
                        "XGA", "HD", "SXGA", "UXGA"}) {
    FrameSize f;
    CHECK(frame_size_from_name(n, &f));
    CHECK_EQ(std::string(frame_size_name(f)), std::string(n));
  }
}

TEST(command_rejections_are_reported) {
  Command c;
  std::string err;
  struct Case {
    const char* in;
    const char* err;
  } cases[] = {
      {"{\"cmd\":\"launch\"}", "unknown cmd: launch"},
      {"{\"frame_size\":\"VGA\"}", "missing cmd"},
      {"{\"cmd\":5}", "cmd must be a string"},
      {"{\"cmd\":\"set\"}", "set without settings"},
      {"{\"cmd\":\"set\",\"frame_size\":\"vga\"}", "bad frame_size"},
      {"{\"cmd\":\"set\",\"frame_size\":3}", "bad frame_size"},
      {"{\"cmd\":\"set\",\"jpeg_quality\":3}", "jpeg_quality must be an integer 4..63"},
      {"{\"cmd\":\"set\",\"jpeg_quality\":64}", "jpeg_quality must be an integer 4..63"},
      {"{\"cmd\":\"set\",\"jpeg_quality\":\"12\"}", "jpeg_quality must be an integer 4..63"},
      {"{\"cmd\":\"set\",\"interval_ms\":99}", "interval_ms must be an integer 100..86400000"},
      {"{\"cmd\":\"set\",\"interval_ms\":86400001}",
       "interval_ms must be an integer 100..86400000"},
      {"{\"cmd\":\"set\",\"interval_ms\":1000,\"bogus\":1}", "unknown field: bogus"},
      {"{\"cmd\":\"reboot\",\"now\":true}", "unknown field: now"},
      {"not json", "bad json: not a JSON object"},
      {"{\"cmd\":\"set\",\"interval_ms\":1.5}", "bad json: only integers are accepted"},
  };
  for (const auto& k : cases) {
    err.clear();
    bool ok = cmd(k.in, &c, &err);
    if (ok) ::tinytest::fail(__FILE__, __LINE__, std::string("accepted: ") + k.in);
    CHECK_EQ(err, std::string(k.err));
  }
  // Unprintable/long user text is clipped in the error.
  CHECK(!cmd("{\"cmd\":\"abcdefghijklmnopqrstuvwxyz0123456789\"}", &c, &err));
  CHECK_EQ(err, std::string("unknown cmd: abcdefghijklmnopqrstuvwx..."));
}

TEST(status_json_has_contract_fields) {
  StatusInfo s;
  s.fw = "1.0.0";
  s.boot_id = 3735928559u;
  s.uptime_s = 120;
  s.rssi = -61;
  s.heap_free = 123456;
  s.psram_free = 3456789;
  s.frames_sent = 118;
  s.reset_reason = "poweron";
  s.last_cmd_error = "bad \"x\"";
  std::string js = build_status_json(s);
  std::vector<JsonMember> m;
  std::string err;
  REQUIRE(parse(js, m, &err));
  auto get = [&](const char* k) -> const JsonValue* {
    for (const auto& x : m)
      if (x.key == k) return &x.value;
    return nullptr;
  };
  const char* ints[] = {"boot_id", "uptime_s", "rssi", "heap_free", "psram_free", "queue",
                        "frames_sent", "frames_dropped", "jpeg_quality", "interval_ms",
                        "frames_invalid", "cmd_errors", "queue_bytes"};
  for (const char* k : ints) {
    const JsonValue* v = get(k);
    if (v == nullptr || v->type != JsonValue::Type::kInt)
      ::tinytest::fail(__FILE__, __LINE__, std::string("missing int field ") + k);
  }
  const char* strs[] = {"state", "fw", "reset_reason", "frame_size", "last_cmd_error"};
  for (const char* k : strs) {
    const JsonValue* v = get(k);
    if (v == nullptr || v->type != JsonValue::Type::kString)
      ::tinytest::fail(__FILE__, __LINE__, std::string("missing string field ") + k);
  }
  CHECK_EQ(get("state")->s, std::string("online"));
  CHECK_EQ(get("boot_id")->i, 3735928559);
  CHECK_EQ(get("rssi")->i, -61);
  CHECK_EQ(get("frame_size")->s, std::string("SVGA"));
  CHECK_EQ(get("jpeg_quality")->i, 12);
  CHECK_EQ(get("interval_ms")->i, 1000);
  CHECK_EQ(get("last_cmd_error")->s, std::string("bad \"x\""));
  s.last_cmd_error.clear();
  REQUIRE(parse(build_status_json(s), m));
  CHECK(get("last_cmd_error")->type == JsonValue::Type::kNull);
  CHECK_EQ(std::string(offline_status_json()), std::string("{\"state\":\"offline\"}"));
}
