// vcam: a virtual ESP32-CAM on the host. Runs the same camlink core as the
// firmware (CamNode: capture cadence, offline queue, chunk window, resend,
// status, commands) over libmosquitto with TLS, and publishes JPEG files from
// a folder (sorted) or generated test frames exactly as the device would.
//
// Exit codes: 0 all captured frames acknowledged (JSON summary on stdout),
// 2 usage, 3 reboot requested by a command, 4 timeout before everything was
// acknowledged, 5 no frames / setup failure.
#include <mosquitto.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "camlink/backoff.h"
#include "camlink/node.h"
#include "camlink/version.h"
#include "testjpeg.h"

namespace fs = std::filesystem;
using namespace camlink;

namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

struct Options {
  std::string host = "127.0.0.1";
  int port = 8883;
  std::string cafile;
  bool insecure_plain = false;
  std::string id;
  std::string password;
  std::string prefix = "cam";
  std::string frames_dir;
  long generate = -1;
  long count = -1;
  uint32_t interval_ms = 1000;
  size_t chunk = kDefaultChunkData;
  size_t window = 4;
  size_t queue_bytes = 8u * 1024u * 1024u;
  size_t queue_frames = 256;
  bool has_boot_id = false;
  uint32_t boot_id = 0;
  int keepalive = 10;
  uint32_t timeout_s = 300;
  int width = 320, height = 240;
  size_t pad = 0;
  bool clock_sync = true;
  uint32_t status_period_ms = 30000;
  uint32_t ack_timeout_ms = 20000;
  uint32_t partial_timeout_ms = camlink::kDefaultRestartAfterMs;
  uint32_t backoff_base_ms = 250;
  uint32_t backoff_max_ms = 5000;
  bool verbose = false;
};

void usage() {
  std::fprintf(stderr,
      "usage: vcam --id ID --password PW (--frames DIR | --generate N) [options]\n"
      "  --host H (127.0.0.1)  --port P (8883)  --cafile CA.pem | --insecure-plain\n"
      "  --prefix cam  --count N  --interval-ms 1000  --chunk 8192  --window 4\n"
      "  --boot-id U32  --queue-bytes 8388608  --queue-frames 256  --keepalive 10\n"
      "  --timeout-s 300  --size 320x240  --pad BYTES  --no-clock-sync\n"
      "  --status-period-ms 30000  --ack-timeout-ms 20000  --partial-timeout-ms 50000\n"
      "  --backoff-base-ms 250  --backoff-max-ms 5000  --verbose\n");
}

bool parse_u64(const char* s, unsigned long long* out) {
  if (s == nullptr || *s == '\0' || *s == '-') return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s, &end, 0);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

bool parse_args(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&](const char** v) {
      if (i + 1 >= argc) return false;
      *v = argv[++i];
      return true;
    };
    auto num = [&](unsigned long long lo, unsigned long long hi, unsigned long long* out) {
      const char* v = nullptr;
      if (!next(&v) || !parse_u64(v, out) || *out < lo || *out > hi) {
        std::fprintf(stderr, "vcam: bad value for %s\n", a.c_str());
        return false;
      }
      return true;
    };
    const char* v = nullptr;
    unsigned long long n = 0;
    if (a == "--host") { if (!next(&v)) return false; o->host = v; }
    else if (a == "--port") { if (!num(1, 65535, &n)) return false; o->port = static_cast<int>(n); }
    else if (a == "--cafile") { if (!next(&v)) return false; o->cafile = v; }
    else if (a == "--insecure-plain") o->insecure_plain = true;
    else if (a == "--id") { if (!next(&v)) return false; o->id = v; }
    else if (a == "--password") { if (!next(&v)) return false; o->password = v; }
    else if (a == "--prefix") { if (!next(&v)) return false; o->prefix = v; }
    else if (a == "--frames") { if (!next(&v)) return false; o->frames_dir = v; }
    else if (a == "--generate") { if (!num(1, 100000000, &n)) return false; o->generate = static_cast<long>(n); }
    else if (a == "--count") { if (!num(1, 100000000, &n)) return false; o->count = static_cast<long>(n); }
    else if (a == "--interval-ms") { if (!num(0, 86400000, &n)) return false; o->interval_ms = static_cast<uint32_t>(n); }
    else if (a == "--chunk") { if (!num(1, 1u << 20, &n)) return false; o->chunk = n; }
    else if (a == "--window") { if (!num(1, 1000, &n)) return false; o->window = n; }
    else if (a == "--queue-bytes") { if (!num(1, 1ull << 34, &n)) return false; o->queue_bytes = n; }
    else if (a == "--queue-frames") { if (!num(1, 1000000, &n)) return false; o->queue_frames = n; }
    else if (a == "--boot-id") { if (!num(0, 0xFFFFFFFFull, &n)) return false; o->boot_id = static_cast<uint32_t>(n); o->has_boot_id = true; }
    else if (a == "--keepalive") { if (!num(5, 3600, &n)) return false; o->keepalive = static_cast<int>(n); }
    else if (a == "--timeout-s") { if (!num(0, 86400 * 365, &n)) return false; o->timeout_s = static_cast<uint32_t>(n); }
    else if (a == "--pad") { if (!num(0, 64u << 20, &n)) return false; o->pad = n; }
    else if (a == "--status-period-ms") { if (!num(100, 86400000, &n)) return false; o->status_period_ms = static_cast<uint32_t>(n); }
    else if (a == "--ack-timeout-ms") { if (!num(100, 86400000, &n)) return false; o->ack_timeout_ms = static_cast<uint32_t>(n); }
    else if (a == "--partial-timeout-ms") { if (!num(0, 86400000, &n)) return false; o->partial_timeout_ms = static_cast<uint32_t>(n); }
    else if (a == "--backoff-base-ms") { if (!num(1, 600000, &n)) return false; o->backoff_base_ms = static_cast<uint32_t>(n); }
    else if (a == "--backoff-max-ms") { if (!num(1, 3600000, &n)) return false; o->backoff_max_ms = static_cast<uint32_t>(n); }
    else if (a == "--size") {
      if (!next(&v) || std::sscanf(v, "%dx%d", &o->width, &o->height) != 2 || o->width < 8 ||
          o->height < 8 || o->width > 4096 || o->height > 4096) {
        std::fprintf(stderr, "vcam: bad --size\n");
        return false;
      }
    }
    else if (a == "--no-clock-sync") o->clock_sync = false;
    else if (a == "--verbose" || a == "-v") o->verbose = true;
    else if (a == "--help" || a == "-h") return false;
    else {
      std::fprintf(stderr, "vcam: unknown argument %s\n", a.c_str());
      return false;
    }
  }
  if (!valid_device_id(o->id)) {
    std::fprintf(stderr, "vcam: --id must match ^[A-Za-z0-9_-]{1,32}$\n");
    return false;
  }
  if (o->password.empty()) {
    const char* env = std::getenv("VCAM_PASSWORD");
    if (env != nullptr) o->password = env;
  }
  if (o->password.empty()) {
    std::fprintf(stderr, "vcam: --password (or VCAM_PASSWORD) is required\n");
    return false;
  }
  if ((o->frames_dir.empty()) == (o->generate < 0)) {
    std::fprintf(stderr, "vcam: give exactly one of --frames DIR and --generate N\n");
    return false;
  }
  if (o->cafile.empty() && !o->insecure_plain) {
    std::fprintf(stderr, "vcam: --cafile is required (or --insecure-plain for a loopback listener)\n");
    return false;
  }
  return true;
}

class HostClock : public Clock {
 public:
  explicit HostClock(bool synced) : synced_(synced), start_(std::chrono::steady_clock::now()) {}
  uint64_t mono_ms() override {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::steady_clock::now() - start_)
                                     .count());
  }
  bool wall_ms(uint64_t* out) override {
    if (!synced_) return false;
    *out = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
    return true;
  }

 private:
  bool synced_;
  std::chrono::steady_clock::time_point start_;
};

class MosqPublisher : public MqttPublisher {
 public:
  explicit MosqPublisher(struct mosquitto* m) : m_(m) {}
  int publish(const char* topic, const uint8_t* payload, size_t len, int qos,
              bool retain) override {
    int mid = 0;
    int rc = mosquitto_publish(m_, &mid, topic, static_cast<int>(len), payload, qos, retain);
    if (rc != MOSQ_ERR_SUCCESS) return -1;
    return mid;
  }

 private:
  struct mosquitto* m_;
};

// Frames from a folder (sorted by name, cycled) or generated test frames.
class HostCamera : public Camera {
 public:
  HostCamera(std::vector<fs::path> files, const Options& o) : files_(std::move(files)), o_(o) {}
  bool capture(Bytes* out) override {
    uint64_t n = shots_++;
    if (files_.empty()) {
      std::string comment = "vcam " + o_.id + " frame " + std::to_string(n);
      std::vector<uint8_t> j =
          testjpeg::make(o_.width, o_.height, static_cast<uint32_t>(n), comment, o_.pad);
      return out->assign(j.data(), j.size());
    }
    const fs::path& p = files_[n % files_.size()];
    std::ifstream in(p, std::ios::binary);
    if (!in) return false;
    std::vector<uint8_t> d((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (d.empty()) return false;
    return out->assign(d.data(), d.size());
  }
  bool apply(const CameraSettings& s, std::string* err) override {
    (void)err;
    std::fprintf(stderr, "vcam: camera settings frame_size=%s jpeg_quality=%u (recorded only)\n",
                 frame_size_name(s.frame_size), static_cast<unsigned>(s.jpeg_quality));
    return true;
  }

 private:
  std::vector<fs::path> files_;
  const Options& o_;
  uint64_t shots_ = 0;
};

class HostSys : public SystemInfo {};

class UrandomRng : public Rng {
 public:
  uint32_t next_u32() override { return static_cast<uint32_t>(dev_()); }

 private:
  std::random_device dev_;
};

struct Ctx {
  CamNode* node = nullptr;
  bool verbose = false;
  bool session_up = false;  // CONNACK accepted, not yet disconnected
  uint64_t connects = 0;
  uint64_t refused = 0;
};

void on_connect(struct mosquitto* m, void* obj, int rc) {
  auto* c = static_cast<Ctx*>(obj);
  if (rc != 0) {
    ++c->refused;
    std::fprintf(stderr, "vcam: connection refused: %s\n", mosquitto_connack_string(rc));
    return;
  }
  ++c->connects;
  c->session_up = true;
  std::fprintf(stderr, "vcam: connected\n");
  mosquitto_subscribe(m, nullptr, c->node->cmd_topic().c_str(), 1);
  c->node->on_connected();
}

void on_disconnect(struct mosquitto*, void* obj, int rc) {
  auto* c = static_cast<Ctx*>(obj);
  if (c->session_up) std::fprintf(stderr, "vcam: disconnected (rc=%d)\n", rc);
  c->session_up = false;
  c->node->on_disconnected();
}

void on_publish(struct mosquitto*, void* obj, int mid) {
  static_cast<Ctx*>(obj)->node->on_published(mid);
}

void on_message(struct mosquitto*, void* obj, const struct mosquitto_message* msg) {
  auto* c = static_cast<Ctx*>(obj);
  if (c->verbose) std::fprintf(stderr, "vcam: message on %s\n", msg->topic);
  c->node->on_message(msg->topic, static_cast<const uint8_t*>(msg->payload),
                      static_cast<size_t>(msg->payloadlen));
}

std::vector<fs::path> list_jpegs(const std::string& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    std::string ext = e.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) {
      return static_cast<char>(std::tolower(ch));
    });
    if (ext == ".jpg" || ext == ".jpeg") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse_args(argc, argv, &o)) {
    usage();
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);

  std::vector<fs::path> files;
  long count = o.count;
  if (!o.frames_dir.empty()) {
    files = list_jpegs(o.frames_dir);
    if (files.empty()) {
      std::fprintf(stderr, "vcam: no .jpg files in %s\n", o.frames_dir.c_str());
      return 5;
    }
    if (count < 0) count = static_cast<long>(files.size());
  } else if (count < 0) {
    count = o.generate;
  }

  UrandomRng rng;
  if (!o.has_boot_id) o.boot_id = rng.next_u32();

  HostClock clock(o.clock_sync);
  HostCamera camera(files, o);
  HostSys sys;

  mosquitto_lib_init();
  struct mosquitto* mosq = mosquitto_new(o.id.c_str(), true, nullptr);
  if (mosq == nullptr) {
    std::fprintf(stderr, "vcam: mosquitto_new failed\n");
    return 5;
  }
  MosqPublisher pub(mosq);

  NodeConfig cfg;
  cfg.device_id = o.id;
  cfg.prefix = o.prefix;
  cfg.fw = std::string(CAMLINK_FW_VERSION) + "-vcam";
  cfg.boot_id = o.boot_id;
  cfg.reset_reason = "poweron";
  cfg.camera.interval_ms = o.interval_ms;
  cfg.uplink.chunk_data = o.chunk;
  cfg.uplink.window = o.window;
  cfg.uplink.ack_timeout_ms = o.ack_timeout_ms;
  cfg.uplink.restart_after_ms = o.partial_timeout_ms;
  cfg.queue_bytes = o.queue_bytes;
  cfg.queue_frames = o.queue_frames;
  cfg.status_period_ms = o.status_period_ms;
  cfg.capture_limit = static_cast<uint32_t>(count);
  CamNode node(cfg, clock, pub, camera, sys);

  Ctx ctx;
  ctx.node = &node;
  ctx.verbose = o.verbose;
  mosquitto_user_data_set(mosq, &ctx);
  mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_username_pw_set(mosq, o.id.c_str(), o.password.c_str());
  std::string offline = offline_status_json();
  mosquitto_will_set(mosq, node.status_topic().c_str(), static_cast<int>(offline.size()),
                     offline.data(), 1, true);
  if (!o.insecure_plain) {
    int rc = mosquitto_tls_set(mosq, o.cafile.c_str(), nullptr, nullptr, nullptr, nullptr);
    if (rc != MOSQ_ERR_SUCCESS) {
      std::fprintf(stderr, "vcam: TLS setup failed: %s\n", mosquitto_strerror(rc));
      return 5;
    }
    mosquitto_tls_opts_set(mosq, 1, "tlsv1.2", nullptr);
    mosquitto_tls_insecure_set(mosq, false);
  }
  mosquitto_connect_callback_set(mosq, on_connect);
  mosquitto_disconnect_callback_set(mosq, on_disconnect);
  mosquitto_publish_callback_set(mosq, on_publish);
  mosquitto_message_callback_set(mosq, on_message);

  Backoff backoff(o.backoff_base_ms, o.backoff_max_ms, rng);
  bool socket_open = false;
  bool first_connect = true;
  uint64_t next_connect_ms = 0;
  uint64_t attempts = 0;
  const uint64_t deadline = o.timeout_s == 0 ? UINT64_MAX : clock.mono_ms() + o.timeout_s * 1000ull;
  int exit_code = 0;

  std::fprintf(stderr, "vcam: id=%s boot_id=%u frames=%ld chunk=%zu window=%zu %s:%d%s\n",
               o.id.c_str(), o.boot_id, count, o.chunk, o.window, o.host.c_str(), o.port,
               o.insecure_plain ? " (plain)" : " (TLS)");

  while (true) {
    uint64_t now = clock.mono_ms();
    if (g_stop) {
      exit_code = 130;
      break;
    }
    if (now >= deadline) {
      std::fprintf(stderr, "vcam: timeout with %zu frame(s) unacknowledged\n", node.queue().size());
      exit_code = 4;
      break;
    }
    if (!socket_open && now >= next_connect_ms) {
      ++attempts;
      int rc = first_connect ? mosquitto_connect(mosq, o.host.c_str(), o.port, o.keepalive)
                             : mosquitto_reconnect(mosq);
      if (rc == MOSQ_ERR_SUCCESS) {
        socket_open = true;
        first_connect = false;
      } else {
        uint32_t d = backoff.next_delay_ms();
        if (o.verbose || attempts <= 3 || attempts % 10 == 0)
          std::fprintf(stderr, "vcam: connect failed (%s), retry in %u ms\n",
                       rc == MOSQ_ERR_ERRNO ? std::strerror(errno) : mosquitto_strerror(rc), d);
        next_connect_ms = now + d;
      }
    }
    if (socket_open) {
      uint64_t wait = std::min<uint64_t>(20, node.ms_until_next_capture());
      int rc = mosquitto_loop(mosq, static_cast<int>(wait), 1);
      if (rc != MOSQ_ERR_SUCCESS) {
        socket_open = false;
        if (ctx.session_up) {  // no disconnect callback came
          ctx.session_up = false;
          node.on_disconnected();
        }
        uint32_t d = backoff.next_delay_ms();
        std::fprintf(stderr, "vcam: connection lost (%s), reconnect in %u ms\n",
                     mosquitto_strerror(rc), d);
        next_connect_ms = clock.mono_ms() + d;
      } else if (ctx.session_up) {
        backoff.reset();
      }
    } else {
      uint64_t until = next_connect_ms > now ? next_connect_ms - now : 0;
      uint64_t sleep_ms = std::min<uint64_t>({20, until, node.ms_until_next_capture()});
      if (sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
    }
    node.tick();
    if (node.reboot_requested()) {
      std::fprintf(stderr, "vcam: reboot requested by command\n");
      exit_code = 3;
      break;
    }
    if (node.done()) break;
  }

  // Leave cleanly: a retained "offline" (the will is not sent on a clean disconnect).
  if (ctx.session_up) {
    int mid = 0;
    mosquitto_publish(mosq, &mid, node.status_topic().c_str(), static_cast<int>(offline.size()),
                      offline.data(), 1, true);
    for (int i = 0; i < 50 && mosquitto_want_write(mosq); ++i) mosquitto_loop(mosq, 20, 1);
    mosquitto_loop(mosq, 50, 1);
    mosquitto_disconnect(mosq);
    mosquitto_loop(mosq, 50, 1);
  }

  const UplinkStats& us = node.uplink().stats();
  const NodeStats& ns = node.stats();
  std::printf(
      "{\"device\":\"%s\",\"boot_id\":%u,\"ok\":%s,\"exit_code\":%d,\"frames_captured\":%llu,"
      "\"frames_sent\":%llu,\"frames_dropped\":%u,\"frames_invalid\":%llu,"
      "\"capture_errors\":%llu,\"frames_queued\":%zu,\"chunks_published\":%llu,"
      "\"chunks_acked\":%llu,\"chunks_resent\":%llu,\"ack_timeouts\":%llu,"
      "\"frames_restarted\":%llu,\"stale_acks\":%llu,"
      "\"publish_failures\":%llu,\"connects\":%llu,\"connect_attempts\":%llu,"
      "\"reconnects\":%llu,\"cmd_ok\":%llu,\"cmd_errors\":%llu,\"elapsed_ms\":%llu}\n",
      o.id.c_str(), o.boot_id, exit_code == 0 ? "true" : "false", exit_code,
      static_cast<unsigned long long>(ns.frames_captured),
      static_cast<unsigned long long>(us.frames_sent), node.queue().dropped(),
      static_cast<unsigned long long>(ns.frames_invalid),
      static_cast<unsigned long long>(ns.capture_errors), node.queue().size(),
      static_cast<unsigned long long>(us.chunks_published),
      static_cast<unsigned long long>(us.chunks_acked),
      static_cast<unsigned long long>(us.chunks_resent),
      static_cast<unsigned long long>(us.ack_timeouts),
      static_cast<unsigned long long>(us.frames_restarted),
      static_cast<unsigned long long>(us.stale_acks),
      static_cast<unsigned long long>(us.publish_failures),
      static_cast<unsigned long long>(ctx.connects), static_cast<unsigned long long>(attempts),
      static_cast<unsigned long long>(ns.reconnects), static_cast<unsigned long long>(ns.cmd_ok),
      static_cast<unsigned long long>(ns.cmd_errors),
      static_cast<unsigned long long>(clock.mono_ms()));
  std::fflush(stdout);
  mosquitto_destroy(mosq);
  mosquitto_lib_cleanup();
  return exit_code;
}
