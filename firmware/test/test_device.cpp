// Device rules of the review defects 1, 6, 7, 9, 10 and the new features (tuning,
// OTA state machine, SHA-256, camera bring-up and recovery, deep-sleep identity).
#include <cstring>
#include <string>
#include <vector>

#include "camlink/camera_plan.h"
#include "camlink/command.h"
#include "camlink/netcfg.h"
#include "camlink/node.h"
#include "camlink/ota.h"
#include "camlink/sha256.h"
#include "fakes.h"
#include "tinytest.h"

using namespace camlink;

namespace {

Command parse(const std::string& s, bool* ok, std::string* err) {
  Command c;
  *ok = parse_command(reinterpret_cast<const uint8_t*>(s.data()), s.size(), &c, err);
  return c;
}

std::string sha_hex(const std::string& s) {
  Sha256 h;
  h.update(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  uint8_t d[32];
  h.finish(d);
  return to_hex(d, 32);
}

}  // namespace

// ---------------------------------------------------------------- defect 7
TEST(defect7_quality_minimum_is_6_at_large_frame_sizes) {
  CHECK_EQ(min_jpeg_quality(FrameSize::kUXGA, FrameSize::kUXGA), 6);
  CHECK_EQ(min_jpeg_quality(FrameSize::kXGA, FrameSize::kUXGA), 6);
  CHECK_EQ(min_jpeg_quality(FrameSize::kSVGA, FrameSize::kUXGA), 4);
  // Without PSRAM the buffers are sized for VGA: 6 at VGA too.
  CHECK_EQ(min_jpeg_quality(FrameSize::kVGA, FrameSize::kVGA), 6);
  CameraSettings s;
  s.frame_size = FrameSize::kUXGA;
  s.jpeg_quality = 4;
  std::string err;
  CHECK(!check_settings(s, FrameSize::kUXGA, &err));
  CHECK_EQ(err, std::string("jpeg_quality below 6 at UXGA"));
  s.jpeg_quality = 6;
  CHECK(check_settings(s, FrameSize::kUXGA, &err));
  s.frame_size = FrameSize::kSXGA;
  CHECK(!check_settings(s, FrameSize::kVGA, &err));
  CHECK(err.find("frame_size above VGA") == 0);
}

TEST(defect7_set_quality_4_at_uxga_is_refused_by_the_node) {
  fakes::Clock clock;
  fakes::Mqtt mqtt;
  fakes::Camera cam;
  fakes::Sys sys;
  NodeConfig cfg;
  cfg.device_id = "cam01";
  cfg.camera.frame_size = FrameSize::kUXGA;
  CamNode node(cfg, clock, mqtt, cam, sys);
  std::string cmd = "{\"cmd\":\"set\",\"jpeg_quality\":4}";
  node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(cmd.data()), cmd.size());
  CHECK_EQ(node.stats().cmd_errors, 1u);
  CHECK_EQ(cam.applied, 0);
  CHECK_EQ(node.camera_settings().jpeg_quality, 12);
  // Quality 4 and a smaller size in one command is fine (all-or-nothing on the result).
  cmd = "{\"cmd\":\"set\",\"jpeg_quality\":4,\"frame_size\":\"SVGA\"}";
  node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(cmd.data()), cmd.size());
  CHECK_EQ(node.stats().cmd_errors, 1u);
  CHECK_EQ(cam.applied, 1);
  CHECK_EQ(node.camera_settings().jpeg_quality, 4);
}

TEST(frame_size_above_the_plan_maximum_is_refused) {
  fakes::Clock clock;
  fakes::Mqtt mqtt;
  fakes::Camera cam;
  fakes::Sys sys;
  NodeConfig cfg;
  cfg.device_id = "cam01";
  cfg.max_frame_size = FrameSize::kVGA;  // no PSRAM
  cfg.camera.frame_size = FrameSize::kVGA;
  CamNode node(cfg, clock, mqtt, cam, sys);
  std::string cmd = "{\"cmd\":\"set\",\"frame_size\":\"UXGA\"}";
  node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(cmd.data()), cmd.size());
  CHECK_EQ(node.stats().cmd_errors, 1u);
  CHECK(node.stats().last_cmd_error.find("frame_size above VGA") == 0);
}

// ---------------------------------------------------------------- tuning
TEST(tuning_commands_parse_apply_and_report) {
  bool ok = false;
  std::string err;
  Command c = parse("{\"cmd\":\"set\",\"vflip\":true,\"hmirror\":1,\"aec\":false,"
                    "\"aec_value\":600,\"agc\":false,\"agc_gain\":7,\"awb\":false,\"wb_mode\":2}",
                    &ok, &err);
  REQUIRE(ok);
  CameraSettings s = c.applied_to(CameraSettings{});
  CHECK(s.tuning.vflip && s.tuning.hmirror && !s.tuning.aec && !s.tuning.agc && !s.tuning.awb);
  CHECK_EQ(s.tuning.aec_value, 600);
  CHECK_EQ(s.tuning.agc_gain, 7);
  CHECK_EQ(s.tuning.wb_mode, 2);
  CHECK_EQ(s.jpeg_quality, 12);  // untouched
  parse("{\"cmd\":\"set\",\"agc_gain\":31}", &ok, &err);
  CHECK(!ok);
  CHECK_EQ(err, std::string("agc_gain must be an integer 0..30"));
  parse("{\"cmd\":\"set\",\"vflip\":2}", &ok, &err);
  CHECK(!ok);
  parse("{\"cmd\":\"set\",\"wb_mode\":5}", &ok, &err);
  CHECK(!ok);

  fakes::Clock clock;
  fakes::Mqtt mqtt;
  fakes::Camera cam;
  fakes::Sys sys;
  NodeConfig cfg;
  cfg.device_id = "cam01";
  CamNode node(cfg, clock, mqtt, cam, sys);
  std::string cmd = "{\"cmd\":\"set\",\"vflip\":true}";
  node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(cmd.data()), cmd.size());
  CHECK_EQ(cam.applied, 1);
  CHECK(cam.last.tuning.vflip);
  std::string js = node.status_json();
  CHECK(js.find("\"vflip\":true") != std::string::npos);
  CHECK(js.find("\"wb_mode\":0") != std::string::npos);
}

// ---------------------------------------------------------------- defect 1
TEST(defect1_ip_literal_detection) {
  CHECK(is_ip_literal("192.168.1.10"));
  CHECK(is_ip_literal("10.0.0.1"));
  CHECK(is_ip_literal("::1"));
  CHECK(is_ip_literal("fd00::5"));
  CHECK(!is_ip_literal("broker.lan"));
  CHECK(!is_ip_literal("1.2.3"));
  CHECK(!is_ip_literal("256.1.1.1"));
  CHECK(!is_ip_literal("1.2.3.4.5"));
  CHECK(!is_ip_literal("1..2.3"));
  CHECK(!is_ip_literal(""));
  CHECK(!is_ip_literal("cam-01.example"));
}

TEST(defect1_tls_name_plan_for_ip_hosts) {
  // A DNS host: verified as is.
  TlsNamePlan p = tls_name_plan("broker.lan", "", false);
  CHECK(p.error == nullptr && p.common_name == nullptr && !p.skip_cn_check);
  // IP host + TLS name, IDF 5: verify the DNS name while connecting to the IP.
  p = tls_name_plan("192.168.1.10", "broker.lan", true);
  CHECK(p.error == nullptr);
  CHECK(p.common_name != nullptr && std::strcmp(p.common_name, "broker.lan") == 0);
  CHECK(!p.skip_cn_check);
  // IP host + TLS name, IDF 4.4 (no common_name field): chain only, name check skipped.
  p = tls_name_plan("192.168.1.10", "broker.lan", false);
  CHECK(p.error == nullptr && p.common_name == nullptr && p.skip_cn_check);
  // IP host without a TLS name: cannot verify with mbedTLS 2.28: a configuration error.
  p = tls_name_plan("192.168.1.10", "", true);
  CHECK(p.error != nullptr);
  // The TLS name itself must be a DNS name.
  p = tls_name_plan("192.168.1.10", "192.168.1.10", true);
  CHECK(p.error != nullptr);
}

// ---------------------------------------------------------------- defect 9, 10
TEST(defect9_empty_ssid_is_not_configured) {
  static_assert(!ssid_configured(""), "compile-time use");
  static_assert(ssid_configured("MyNet"), "compile-time use");
  CHECK(!ssid_configured(nullptr));
}

TEST(defect10_wifi_attempt_gets_at_least_the_minimum_window) {
  CHECK_EQ(wifi_attempt_window_ms(2000, 15000), 15000u);
  CHECK_EQ(wifi_attempt_window_ms(4000, 15000), 15000u);
  CHECK_EQ(wifi_attempt_window_ms(60000, 15000), 60000u);
}

// ---------------------------------------------------------------- SHA-256
TEST(sha256_known_vectors) {
  CHECK_EQ(sha_hex(""), std::string("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
  CHECK_EQ(sha_hex("abc"), std::string("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  CHECK_EQ(sha_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
           std::string("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
  // Streaming in odd pieces gives the same digest as one piece.
  std::string big(100000, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + 3);
  Sha256 h;
  for (size_t i = 0; i < big.size();) {
    size_t n = std::min<size_t>(1 + (i % 97), big.size() - i);
    h.update(reinterpret_cast<const uint8_t*>(big.data()) + i, n);
    i += n;
  }
  uint8_t d[32];
  h.finish(d);
  CHECK_EQ(to_hex(d, 32), sha_hex(big));
}

// ---------------------------------------------------------------- OTA
namespace {

struct FakeOta : OtaPlatform {
  std::vector<uint8_t> written;
  bool begun = false, finished = false, boot_set = false, aborted = false;
  bool pending = false, marked_valid = false, rolled_back = false;
  bool fail_write = false, fail_finish = false;
  bool begin(uint32_t, std::string*) override {
    begun = true;
    written.clear();
    return true;
  }
  bool write(const uint8_t* d, size_t n, std::string* err) override {
    if (fail_write) {
      *err = "flash";
      return false;
    }
    written.insert(written.end(), d, d + n);
    return true;
  }
  bool finish(std::string* err) override {
    if (fail_finish) {
      *err = "bad magic";
      return false;
    }
    finished = true;
    return true;
  }
  bool set_boot(std::string*) override {
    boot_set = true;
    return true;
  }
  void abort() override { aborted = true; }
  bool pending_verify() override { return pending; }
  void mark_valid() override { marked_valid = true; }
  void rollback_and_reboot() override { rolled_back = true; }
};

std::vector<uint8_t> image(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 31 + 7);
  v[0] = 0xE9;  // ESP image magic
  return v;
}

void digest(const std::vector<uint8_t>& v, uint8_t out[32]) {
  Sha256 h;
  h.update(v.data(), v.size());
  h.finish(out);
}

}  // namespace

TEST(ota_download_verify_commit) {
  FakeOta p;
  OtaUpdater u(p, 120000);
  auto img = image(10000);
  uint8_t sha[32];
  digest(img, sha);
  std::string err;
  REQUIRE(u.start(sha, static_cast<uint32_t>(img.size()), &err));
  CHECK_EQ(u.describe(), std::string("downloading 0%"));
  CHECK(!u.start(sha, 1, &err));  // one at a time
  CHECK_EQ(err, std::string("update already running"));
  for (size_t i = 0; i < img.size(); i += 1500)
    CHECK(u.feed(img.data() + i, std::min<size_t>(1500, img.size() - i)));
  CHECK(u.end());
  CHECK(u.reboot_due());
  CHECK(p.finished && p.boot_set && !p.aborted);
  CHECK(p.written == img);
  CHECK_EQ(u.describe(), std::string("ready"));
}

TEST(ota_sha256_mismatch_aborts_and_keeps_the_running_image) {
  FakeOta p;
  OtaUpdater u(p, 120000);
  auto img = image(5000);
  uint8_t sha[32];
  digest(img, sha);
  img[4000] ^= 1;  // corrupted in transit
  std::string err;
  REQUIRE(u.start(sha, static_cast<uint32_t>(img.size()), &err));
  CHECK(u.feed(img.data(), img.size()));
  CHECK(!u.end());
  CHECK(p.aborted && !p.boot_set && !p.finished);
  CHECK(u.state() == OtaState::kFailed);
  CHECK_EQ(u.describe(), std::string("failed: sha256 mismatch"));
  // A new attempt is allowed after a failure.
  img[4000] ^= 1;
  REQUIRE(u.start(sha, static_cast<uint32_t>(img.size()), &err));
  CHECK(u.feed(img.data(), img.size()));
  CHECK(u.end());
}

TEST(ota_size_errors_write_errors_and_download_errors_fail) {
  auto img = image(3000);
  uint8_t sha[32];
  digest(img, sha);
  std::string err;
  {
    FakeOta p;
    OtaUpdater u(p, 1000);
    REQUIRE(u.start(sha, 2000, &err));
    CHECK(!u.feed(img.data(), img.size()));  // more than announced
    CHECK_EQ(u.describe(), std::string("failed: image larger than announced"));
    CHECK(p.aborted);
  }
  {
    FakeOta p;
    OtaUpdater u(p, 1000);
    REQUIRE(u.start(sha, 3000, &err));
    CHECK(u.feed(img.data(), 1000));
    CHECK(!u.end());  // short
    CHECK_EQ(u.describe(), std::string("failed: image shorter than announced"));
  }
  {
    FakeOta p;
    p.fail_write = true;
    OtaUpdater u(p, 1000);
    REQUIRE(u.start(sha, 3000, &err));
    CHECK(!u.feed(img.data(), 100));
    CHECK_EQ(u.describe(), std::string("failed: write: flash"));
  }
  {
    FakeOta p;
    p.fail_finish = true;
    OtaUpdater u(p, 1000);
    REQUIRE(u.start(sha, 3000, &err));
    CHECK(u.feed(img.data(), img.size()));
    CHECK(!u.end());
    CHECK(!p.boot_set);
    CHECK_EQ(u.describe(), std::string("failed: image check: bad magic"));
  }
  {
    FakeOta p;
    OtaUpdater u(p, 1000);
    REQUIRE(u.start(sha, 3000, &err));
    u.fail("http 404");
    CHECK_EQ(u.describe(), std::string("failed: download: http 404"));
    CHECK(p.aborted && !p.boot_set);
  }
}

TEST(ota_new_image_confirmed_only_after_broker_connect) {
  FakeOta p;
  p.pending = true;
  OtaUpdater u(p, 120000);
  u.on_boot(1000);
  CHECK(u.state() == OtaState::kPendingVerify);
  std::string err;
  uint8_t sha[32] = {};
  CHECK(!u.start(sha, 10, &err));  // no update on top of an unconfirmed one
  u.tick(120999);
  CHECK(!p.rolled_back);
  u.on_broker_connected();
  CHECK(p.marked_valid);
  CHECK(u.state() == OtaState::kConfirmed);
  u.tick(1000000);
  CHECK(!p.rolled_back);
}

TEST(ota_new_image_rolled_back_when_broker_not_reached) {
  FakeOta p;
  p.pending = true;
  OtaUpdater u(p, 120000);
  u.on_boot(1000);
  u.tick(121000);
  CHECK(p.rolled_back);
  CHECK(!p.marked_valid);
  CHECK(u.state() == OtaState::kRolledBack);
}

TEST(ota_normal_boot_is_not_pending) {
  FakeOta p;
  OtaUpdater u(p, 1000);
  u.on_boot(0);
  u.on_broker_connected();
  u.tick(100000);
  CHECK(!p.marked_valid && !p.rolled_back);
  CHECK_EQ(u.describe(), std::string("idle"));
}

namespace {
struct RecordingOta : OtaHandler {
  std::string url;
  uint32_t size = 0;
  std::string sha;
  bool refuse = false;
  bool request(const std::string& u, const uint8_t s[32], uint32_t n, std::string* err) override {
    if (refuse) {
      *err = "update already running";
      return false;
    }
    url = u;
    size = n;
    sha = to_hex(s, 32);
    return true;
  }
  std::string state() override { return "downloading 5%"; }
};
}  // namespace

TEST(ota_command_reaches_the_handler_and_status_reports_it) {
  fakes::Clock clock;
  fakes::Mqtt mqtt;
  fakes::Camera cam;
  fakes::Sys sys;
  NodeConfig cfg;
  cfg.device_id = "cam01";
  CamNode node(cfg, clock, mqtt, cam, sys);
  std::string sha(64, 'a');
  std::string cmd = "{\"cmd\":\"ota\",\"url\":\"https://broker.lan:8443/fw/cam01.bin\","
                    "\"sha256\":\"" + sha + "\",\"size\":123456}";
  node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(cmd.data()), cmd.size());
  CHECK_EQ(node.stats().last_cmd_error, std::string("ota: not supported"));
  RecordingOta h;
  node.set_ota_handler(&h);
  node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(cmd.data()), cmd.size());
  CHECK_EQ(h.url, std::string("https://broker.lan:8443/fw/cam01.bin"));
  CHECK_EQ(h.size, 123456u);
  CHECK_EQ(h.sha, sha);
  CHECK(node.status_json().find("\"ota\":\"downloading 5%\"") != std::string::npos);
  h.refuse = true;
  node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(cmd.data()), cmd.size());
  CHECK_EQ(node.stats().last_cmd_error, std::string("ota: update already running"));
  bool ok = false;
  std::string err;
  parse("{\"cmd\":\"ota\",\"url\":\"http://x/y\",\"sha256\":\"" + sha + "\",\"size\":1}", &ok, &err);
  CHECK(!ok);
  CHECK_EQ(err, std::string("url must be an https:// URL"));
  parse("{\"cmd\":\"ota\",\"url\":\"https://x/y\",\"sha256\":\"zz\",\"size\":1}", &ok, &err);
  CHECK(!ok);
  parse("{\"cmd\":\"ota\",\"url\":\"https://x/y\",\"size\":1}", &ok, &err);
  CHECK_EQ(err, std::string("ota needs url, sha256 and size"));
}

// ---------------------------------------------------------------- defect 6
TEST(defect6_frame_buffers_sized_from_psram) {
  CameraPlan p = plan_camera(4u << 20, FrameSize::kUXGA, 2u << 20);
  CHECK_EQ(p.fb_count, 2);
  CHECK(p.fb_in_psram && p.grab_latest);
  CHECK(p.init_size == FrameSize::kUXGA);
  // 4 MiB - 2 x 384,000 B of buffers, half of it: 1,713,152 B (under the 2 MiB cap).
  CHECK_EQ(p.queue_bytes, 1713152u);
  CHECK_EQ(plan_camera(4u << 20, FrameSize::kUXGA, 1u << 20).queue_bytes, 1u << 20);
  // Little PSRAM left: the queue takes at most half of what the buffers leave.
  p = plan_camera(1u << 20, FrameSize::kUXGA, 2u << 20);
  CHECK_EQ(p.queue_bytes, ((1u << 20) - 2 * jpeg_buffer_bytes(FrameSize::kUXGA)) / 2);
  // No PSRAM: one internal-RAM buffer at VGA at most, grab-when-empty, small queue.
  p = plan_camera(0, FrameSize::kUXGA, 2u << 20);
  CHECK_EQ(p.fb_count, 1);
  CHECK(!p.fb_in_psram && !p.grab_latest);
  CHECK(p.init_size == FrameSize::kVGA);
  CHECK_EQ(jpeg_buffer_bytes(FrameSize::kVGA), 61440u);
  CHECK_EQ(p.queue_bytes, 64u * 1024u);
  CHECK(std::strcmp(sensor_info(0x26).name, "OV2640") == 0);
  CHECK(sensor_info(0x7670).max_size == FrameSize::kVGA);
  CHECK(std::strcmp(sensor_info(0x1234).name, "unknown") == 0);
}

namespace {
struct FakeDriver : CameraDriver {
  std::vector<std::string> log;
  int fail_first = 0;           // fail this many init() calls
  bool fail_psram = false;      // any plan with PSRAM buffers fails (no PSRAM)
  bool init(const CameraPlan& p, std::string* err) override {
    log.push_back(std::string("init ") + p.name);
    if (fail_first > 0) {
      --fail_first;
      *err = "0x105";
      return false;
    }
    if (fail_psram && p.fb_in_psram) {
      *err = "fb alloc";
      return false;
    }
    return true;
  }
  void deinit() override { log.push_back("deinit"); }
  void power_cycle() override { log.push_back("pwdn"); }
};
}  // namespace

TEST(defect6_bring_up_power_cycles_then_reaches_the_fallback) {
  FakeDriver d;
  d.fail_psram = true;  // the board claims PSRAM but the buffers cannot be allocated
  BringUpResult r = bring_up_camera(d, plan_camera(4u << 20, FrameSize::kUXGA, 1u << 20));
  CHECK(r.ok);
  CHECK_EQ(r.attempts, 3);
  CHECK(std::strcmp(r.plan.name, "fallback") == 0);
  std::vector<std::string> want = {"init psram", "deinit", "pwdn", "init psram",
                                   "deinit", "pwdn", "init fallback"};
  CHECK(d.log == want);

  FakeDriver d2;
  d2.fail_first = 1;  // a sensor that hangs once: the power-cycle heals it
  r = bring_up_camera(d2, plan_camera(4u << 20, FrameSize::kUXGA, 1u << 20));
  CHECK(r.ok);
  CHECK_EQ(r.attempts, 2);
  CHECK(std::strcmp(r.plan.name, "psram") == 0);

  FakeDriver d3;
  d3.fail_first = 5;
  r = bring_up_camera(d3, plan_camera(0, FrameSize::kUXGA, 1u << 20));
  CHECK(!r.ok);  // only now does the caller reboot
  CHECK_EQ(r.last_error, std::string("0x105"));
}

TEST(camera_health_reinits_before_rebooting) {
  CameraHealth h(3, 2);
  CHECK(h.on_capture(false) == CameraHealth::Action::kNone);
  CHECK(h.on_capture(false) == CameraHealth::Action::kNone);
  CHECK(h.on_capture(false) == CameraHealth::Action::kReinit);
  h.on_reinit_done(true);
  CHECK(h.on_capture(true) == CameraHealth::Action::kNone);  // healed: counters reset
  for (int i = 0; i < 2; ++i) h.on_capture(false);
  CHECK(h.on_capture(false) == CameraHealth::Action::kReinit);
  h.on_reinit_done(false);
  CHECK(h.on_capture(false) == CameraHealth::Action::kReinit);
  h.on_reinit_done(false);
  CHECK(h.on_capture(false) == CameraHealth::Action::kReboot);
  CHECK_EQ(h.reinits(), 3u);
}

TEST(cadence_keeps_interval_without_bursts) {
  Cadence c(1000);
  CHECK(c.due(1000));
  c.advance(500, 1010);
  CHECK(!c.due(1499));
  CHECK(c.due(1500));
  c.advance(500, 5000);  // a stall: no catching up
  CHECK_EQ(c.ms_until(5000), 500u);
}

// ---------------------------------------------------------------- deep sleep
TEST(deep_sleep_keeps_boot_id_and_continues_frame_seq) {
  SleepIdentity rtc;  // garbage/zero after power-on
  uint32_t boot = 0, seq = 99;
  resume_identity(&rtc, false, 0xAAAA, &boot, &seq);
  CHECK_EQ(boot, 0xAAAAu);
  CHECK_EQ(seq, 0u);
  save_identity(&rtc, boot, 3);  // three frames, then sleep
  resume_identity(&rtc, true, 0xBBBB, &boot, &seq);
  CHECK_EQ(boot, 0xAAAAu);  // same boot_id ...
  CHECK_EQ(seq, 3u);        // ... numbering continues: (boot_id, frame_seq) stays unique
  CHECK_EQ(rtc.wakes, 1u);
  // A wake with corrupted RTC memory or a power-on starts a new identity.
  rtc.next_seq ^= 0x10;
  resume_identity(&rtc, true, 0xCCCC, &boot, &seq);
  CHECK_EQ(boot, 0xCCCCu);
  CHECK_EQ(seq, 0u);
  save_identity(&rtc, boot, 8);
  resume_identity(&rtc, false, 0xDDDD, &boot, &seq);
  CHECK_EQ(boot, 0xDDDDu);
  CHECK_EQ(seq, 0u);
}

TEST(node_numbers_frames_from_first_seq_and_takes_captures_from_a_task) {
  fakes::Clock clock;
  fakes::Mqtt mqtt;
  fakes::Camera cam;
  fakes::Sys sys;
  NodeConfig cfg;
  cfg.device_id = "cam01";
  cfg.first_seq = 41;
  cfg.capture_in_tick = false;
  CamNode node(cfg, clock, mqtt, cam, sys);
  cam.frames.push_back(fakes::make_jpeg(500, 1));
  node.tick();
  CHECK_EQ(node.stats().frames_captured, 0u);  // the capture task captures, not tick()
  Bytes b;
  auto j = fakes::make_jpeg(500, 2);
  REQUIRE(b.assign(j.data(), j.size()));
  CHECK(node.submit_capture(std::move(b), clock.now));
  node.note_capture_error();
  CHECK_EQ(node.stats().frames_captured, 1u);
  CHECK_EQ(node.stats().capture_errors, 1u);
  CHECK_EQ(node.queue().frames().front().seq, 41u);
  CHECK_EQ(node.next_seq(), 42u);
}
