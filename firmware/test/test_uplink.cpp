// The publish state machine: window, acks, resend from the first unacked chunk,
// ack timeout, publish failures, offline queue, clock back-dating; and CamNode.
#include <string>

#include "camlink/node.h"
#include "camlink/uplink.h"
#include "fakes.h"
#include "tinytest.h"

using namespace camlink;

namespace {

struct Rig {
  fakes::Clock clock;
  fakes::Mqtt mqtt;
  fakes::Camera camera;
  fakes::Sys sys;
  fakes::Receiver rx;
  CamNode node;
  size_t fed = 0;  // mqtt.log entries already given to rx

  explicit Rig(NodeConfig cfg) : node(std::move(cfg), clock, mqtt, camera, sys) {}

  static NodeConfig config(size_t chunk = 1000, size_t window = 4) {
    NodeConfig c;
    c.device_id = "cam01";
    c.fw = "test";
    c.boot_id = 0xB007;
    c.camera.interval_ms = 1000;
    c.uplink.chunk_data = chunk;
    c.uplink.window = window;
    c.uplink.ack_timeout_ms = 5000;
    c.queue_bytes = 1 << 20;
    c.queue_frames = 64;
    return c;
  }

  // Deliver what was published to the receiver (the broker forwarding it).
  void deliver() {
    for (; fed < mqtt.log.size(); ++fed)
      if (mqtt.log[fed].topic == "cam/cam01/frame") rx.feed(mqtt.log[fed].payload);
  }
  // Broker acknowledges the oldest n outstanding publishes (all if n < 0).
  void ack(int n = -1) {
    while (!mqtt.unacked.empty() && n != 0) {
      int mid = mqtt.unacked.front();
      mqtt.unacked.pop_front();
      node.on_published(mid);
      if (n > 0) --n;
    }
  }
  // Run until idle, acknowledging everything (bounded).
  void pump(int rounds = 1000) {
    for (int i = 0; i < rounds; ++i) {
      node.tick();
      deliver();
      if (mqtt.unacked.empty() && node.uplink().idle()) return;
      ack();
    }
  }
  size_t frame_publishes() const { return mqtt.on("/frame").size(); }
};

}  // namespace

TEST(node_publishes_online_status_retained_on_connect) {
  Rig r(Rig::config());
  r.node.on_connected();
  r.node.tick();
  auto st = r.mqtt.on("/status");
  REQUIRE(st.size() == 1);
  CHECK_EQ(st[0]->topic, std::string("cam/cam01/status"));
  CHECK(st[0]->retain);
  CHECK_EQ(st[0]->qos, 1);
  std::string js(st[0]->payload.begin(), st[0]->payload.end());
  CHECK(js.find("\"state\":\"online\"") != std::string::npos);
  CHECK(js.find("\"boot_id\":45063") != std::string::npos);
  CHECK(js.find("\"rssi\":-61") != std::string::npos);
  CHECK_EQ(r.node.cmd_topic(), std::string("cam/cam01/cmd"));
}

TEST(uplink_window_bounds_inflight_and_frame_leaves_when_all_acked) {
  Rig r(Rig::config(1000, 3));
  r.camera.frames.push_back(fakes::make_jpeg(9500, 1));  // 10 chunks
  r.node.on_connected();
  r.node.tick();  // status + capture + 3 chunks
  CHECK_EQ(r.frame_publishes(), 3u);
  CHECK_EQ(r.node.uplink().inflight(), 3u);
  r.node.tick();  // nothing acked: nothing more
  CHECK_EQ(r.frame_publishes(), 3u);
  r.ack(2);       // status ack + chunk 0 ack
  r.node.tick();
  CHECK_EQ(r.frame_publishes(), 4u);
  CHECK_EQ(r.node.queue().size(), 1u);
  r.pump();
  CHECK_EQ(r.node.queue().size(), 0u);
  CHECK_EQ(r.node.uplink().stats().frames_sent, 1u);
  CHECK_EQ(r.frame_publishes(), 10u);
  REQUIRE(r.rx.complete.size() == 1);
  CHECK(std::get<2>(r.rx.complete[0]) == fakes::make_jpeg(9500, 1));
  CHECK_EQ(r.rx.errors, 0);
}

TEST(uplink_out_of_order_acks) {
  Rig r(Rig::config(1000, 4));
  r.camera.frames.push_back(fakes::make_jpeg(3500, 2));  // 4 chunks
  r.node.on_connected();
  r.node.tick();
  r.ack(1);  // status
  REQUIRE(r.mqtt.unacked.size() == 4);
  // Ack chunks 3, 1, 2 first: frame must stay queued until chunk 0 is acked too.
  std::vector<int> mids(r.mqtt.unacked.begin(), r.mqtt.unacked.end());
  r.mqtt.unacked.clear();
  r.node.on_published(mids[3]);
  r.node.on_published(mids[1]);
  r.node.on_published(mids[2]);
  r.node.on_published(mids[2]);  // duplicate ack: harmless
  CHECK_EQ(r.node.queue().size(), 1u);
  r.node.on_published(mids[0]);
  CHECK_EQ(r.node.queue().size(), 0u);
  CHECK_EQ(r.node.uplink().stats().frames_sent, 1u);
}

TEST(uplink_resends_from_first_unacked_chunk_after_reconnect) {
  Rig r(Rig::config(1000, 4));
  r.camera.frames.push_back(fakes::make_jpeg(5500, 3));  // 6 chunks
  r.node.on_connected();
  r.node.tick();  // chunks 0..3 published
  r.ack(3);       // status, chunk 0, chunk 1 acked
  r.node.tick();  // chunks 4, 5 published
  r.deliver();
  CHECK_EQ(r.frame_publishes(), 6u);
  // Connection drops: chunks 2..5 were published but never acknowledged.
  r.node.on_disconnected();
  r.mqtt.unacked.clear();
  r.clock.now += 3000;
  r.node.tick();  // offline: nothing published
  CHECK_EQ(r.frame_publishes(), 6u);
  r.node.on_connected();
  r.node.tick();
  auto frames = r.mqtt.on("/frame");
  REQUIRE(frames.size() == 10u);
  ChunkHeader h = read_header(frames[6]->payload.data());
  CHECK_EQ(h.chunk_index, 2);  // resend starts at the first unacknowledged chunk
  CHECK_EQ(read_header(frames[9]->payload.data()).chunk_index, 5);
  CHECK_EQ(r.node.uplink().stats().chunks_resent, 4u);
  r.pump();
  r.deliver();
  REQUIRE(r.rx.complete.size() == 1);
  CHECK(std::get<2>(r.rx.complete[0]) == fakes::make_jpeg(5500, 3));
  CHECK(r.rx.duplicates >= 4);  // the first copies were delivered too
  CHECK_EQ(r.rx.errors, 0);
}

TEST(uplink_ack_timeout_resends) {
  Rig r(Rig::config(1000, 2));
  r.camera.frames.push_back(fakes::make_jpeg(1500, 4));  // 2 chunks
  r.node.on_connected();
  r.node.tick();
  r.ack(1);  // status only; both chunks lost silently
  r.mqtt.unacked.clear();
  r.clock.now += 4999;
  r.node.tick();
  CHECK_EQ(r.frame_publishes(), 2u);
  r.clock.now += 1;
  r.node.tick();
  CHECK_EQ(r.frame_publishes(), 4u);
  CHECK_EQ(r.node.uplink().stats().ack_timeouts, 1u);
  r.pump();
  CHECK_EQ(r.node.uplink().stats().frames_sent, 1u);
}

TEST(uplink_publish_failure_retries_later) {
  Rig r(Rig::config(1000, 4));
  r.camera.frames.push_back(fakes::make_jpeg(800, 5));
  r.node.on_connected();
  r.mqtt.fail_next = 2;  // status publish and the first chunk publish fail
  r.node.tick();
  CHECK_EQ(r.frame_publishes(), 0u);
  CHECK_EQ(r.node.uplink().stats().publish_failures, 1u);
  r.node.tick();  // before retry_after_fail_ms: the status is retried, the chunk waits
  CHECK_EQ(r.frame_publishes(), 0u);
  CHECK_EQ(r.mqtt.on("/status").size(), 1u);
  r.clock.now += 300;
  r.node.tick();
  CHECK_EQ(r.frame_publishes(), 1u);
  r.pump();
  CHECK_EQ(r.node.uplink().stats().frames_sent, 1u);
}

TEST(offline_queue_drains_in_order_after_reconnect_without_loss) {
  Rig r(Rig::config(700, 4));
  std::vector<std::vector<uint8_t>> sent;
  for (uint32_t i = 0; i < 12; ++i) {
    sent.push_back(fakes::make_jpeg(300 + i * 250, 100 + i));
    r.camera.frames.push_back(sent.back());
  }
  r.node.on_connected();
  for (int i = 0; i < 3; ++i) {  // three frames online
    r.node.tick();
    r.pump(50);
    r.clock.now += 1000;
  }
  CHECK_EQ(r.node.uplink().stats().frames_sent, 3u);
  r.node.on_disconnected();
  r.mqtt.unacked.clear();
  for (int i = 0; i < 9; ++i) {  // nine frames captured offline
    r.node.tick();
    r.clock.now += 1000;
  }
  CHECK_EQ(r.node.queue().size(), 9u);
  CHECK_EQ(r.node.stats().frames_captured, 12u);
  r.node.on_connected();
  r.pump();
  r.deliver();
  CHECK_EQ(r.node.queue().size(), 0u);
  CHECK_EQ(r.node.uplink().stats().frames_sent, 12u);
  REQUIRE(r.rx.complete.size() == 12u);
  for (uint32_t i = 0; i < 12; ++i) {
    CHECK_EQ(std::get<1>(r.rx.complete[i]), i);  // in order
    CHECK(std::get<2>(r.rx.complete[i]) == sent[i]);
    CHECK_EQ(std::get<0>(r.rx.complete[i]), 0xB007u);
  }
  CHECK_EQ(r.rx.errors, 0);
  CHECK_EQ(r.node.stats().reconnects, 1u);
}

TEST(offline_queue_overflow_drops_oldest_and_reports) {
  NodeConfig c = Rig::config(1000, 4);
  c.queue_frames = 3;
  Rig r(c);
  for (uint32_t i = 0; i < 6; ++i) r.camera.frames.push_back(fakes::make_jpeg(1200, i));
  for (int i = 0; i < 6; ++i) {  // never connected
    r.node.tick();
    r.clock.now += 1000;
  }
  CHECK_EQ(r.node.queue().size(), 3u);
  CHECK_EQ(r.node.queue().frames().front().seq, 3u);
  r.node.on_connected();
  r.pump();
  r.deliver();
  REQUIRE(r.rx.complete.size() == 3u);
  CHECK_EQ(std::get<1>(r.rx.complete[0]), 3u);
  std::string js = r.node.status_json();
  CHECK(js.find("\"frames_dropped\":3") != std::string::npos);
  CHECK(js.find("\"frames_sent\":3") != std::string::npos);
}

TEST(dropping_a_frame_in_flight_keeps_its_window_slots_until_acked) {
  NodeConfig c = Rig::config(1000, 2);
  c.queue_frames = 1;
  Rig r(c);
  r.camera.frames.push_back(fakes::make_jpeg(5000, 1));
  r.camera.frames.push_back(fakes::make_jpeg(1500, 2));
  r.node.on_connected();
  r.node.tick();  // frame 0: chunks 0,1 in flight
  CHECK_EQ(r.node.uplink().inflight(), 2u);
  r.clock.now += 1000;
  r.node.capture_now();  // frame 1 replaces frame 0 (count budget 1)
  // Those two publishes are still in the MQTT library's outbox: nothing more goes out
  // until they are acknowledged (a dead link must not fill the outbox frame by frame).
  size_t before = r.frame_publishes();
  r.node.tick();
  CHECK_EQ(r.node.uplink().inflight(), 2u);
  CHECK_EQ(r.frame_publishes(), before);
  r.pump();
  r.deliver();
  REQUIRE(r.rx.complete.size() == 1u);
  CHECK_EQ(std::get<1>(r.rx.complete[0]), 1u);
  CHECK_EQ(r.node.queue().dropped(), 1u);
}

TEST(invalid_jpeg_and_capture_errors_are_counted_not_sent) {
  Rig r(Rig::config());
  r.camera.frames.push_back({0x00, 0x01, 0x02, 0x03, 0x04});
  r.camera.frames.push_back({});  // capture error
  std::vector<uint8_t> padded = fakes::make_jpeg(100, 9);
  padded.insert(padded.end(), 8, 0x00);  // driver padding after EOI is trimmed
  r.camera.frames.push_back(padded);
  r.node.on_connected();
  for (int i = 0; i < 3; ++i) {
    if (i > 0) r.clock.now += 1000;
    r.node.tick();
  }
  r.pump();
  r.deliver();
  CHECK_EQ(r.node.stats().frames_invalid, 1u);
  CHECK_EQ(r.node.stats().capture_errors, 1u);
  REQUIRE(r.rx.complete.size() == 1u);
  CHECK_EQ(std::get<2>(r.rx.complete[0]).size(), 100u);
  CHECK_EQ(std::get<1>(r.rx.complete[0]), 0u);  // seq counts accepted frames only
  std::string js = r.node.status_json();
  CHECK(js.find("\"frames_invalid\":1") != std::string::npos);
}

TEST(capture_cadence_follows_interval) {
  Rig r(Rig::config());
  for (int i = 0; i < 20; ++i) r.camera.frames.push_back(fakes::make_jpeg(50, i));
  r.node.tick();  // t=1000: capture
  CHECK_EQ(r.node.stats().frames_captured, 1u);
  r.clock.now += 999;
  r.node.tick();
  CHECK_EQ(r.node.stats().frames_captured, 1u);
  r.clock.now += 1;
  r.node.tick();
  CHECK_EQ(r.node.stats().frames_captured, 2u);
  r.clock.now += 10000;  // a long stall: one capture, not a burst of ten
  r.node.tick();
  r.node.tick();
  CHECK_EQ(r.node.stats().frames_captured, 3u);
  CHECK_EQ(r.node.ms_until_next_capture(), 1000u);
}

TEST(commands_change_settings_and_errors_are_reported) {
  Rig r(Rig::config());
  r.node.on_connected();
  r.node.tick();
  r.ack();
  size_t statuses = r.mqtt.on("/status").size();
  std::string set = "{\"cmd\":\"set\",\"frame_size\":\"VGA\",\"jpeg_quality\":20,\"interval_ms\":250}";
  r.node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(set.data()), set.size());
  CHECK(r.node.camera_settings().frame_size == FrameSize::kVGA);
  CHECK_EQ(r.node.camera_settings().jpeg_quality, 20);
  CHECK_EQ(r.node.camera_settings().interval_ms, 250u);
  CHECK_EQ(r.camera.applied, 1);
  r.node.tick();
  CHECK_EQ(r.mqtt.on("/status").size(), statuses + 1);  // status published after a command
  std::string js(r.mqtt.log.back().payload.begin(), r.mqtt.log.back().payload.end());
  CHECK(js.find("\"frame_size\":\"VGA\"") != std::string::npos);
  CHECK(js.find("\"interval_ms\":250") != std::string::npos);
  // Interval only: camera not touched.
  std::string iv = "{\"cmd\":\"set\",\"interval_ms\":500}";
  r.node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(iv.data()), iv.size());
  CHECK_EQ(r.camera.applied, 1);
  // Invalid: nothing changes, error reported.
  std::string bad = "{\"cmd\":\"set\",\"jpeg_quality\":99,\"interval_ms\":100}";
  r.node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(bad.data()), bad.size());
  CHECK_EQ(r.node.camera_settings().interval_ms, 500u);
  CHECK_EQ(r.node.stats().cmd_errors, 1u);
  r.node.tick();
  js.assign(r.mqtt.log.back().payload.begin(), r.mqtt.log.back().payload.end());
  CHECK(js.find("\"cmd_errors\":1") != std::string::npos);
  CHECK(js.find("\"last_cmd_error\":\"jpeg_quality must be an integer 4..63\"") !=
        std::string::npos);
  // Camera refusing the settings is an error too.
  r.camera.fail_apply = true;
  std::string fs = "{\"cmd\":\"set\",\"frame_size\":\"UXGA\"}";
  r.node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(fs.data()), fs.size());
  CHECK(r.node.camera_settings().frame_size == FrameSize::kVGA);
  CHECK_EQ(r.node.stats().cmd_errors, 2u);
  CHECK_EQ(r.node.stats().last_cmd_error, std::string("camera: sensor refused"));
  // Other topics are ignored; reboot sets the flag.
  std::string rb = "{\"cmd\":\"reboot\"}";
  r.node.on_message("cam/cam02/cmd", reinterpret_cast<const uint8_t*>(rb.data()), rb.size());
  CHECK(!r.node.reboot_requested());
  r.node.on_message("cam/cam01/cmd", reinterpret_cast<const uint8_t*>(rb.data()), rb.size());
  CHECK(r.node.reboot_requested());
}

TEST(clock_sync_after_capture_backdates_unsent_frames_only) {
  Rig r(Rig::config(1000, 1));
  r.camera.frames.push_back(fakes::make_jpeg(1500, 1));  // 2 chunks
  r.camera.frames.push_back(fakes::make_jpeg(500, 2));
  r.node.on_connected();
  r.node.tick();  // frame 0 captured unsynced at t=1000; chunk 0 goes out (header frozen)
  r.clock.now = 2000;
  r.node.tick();  // frame 1 captured unsynced at t=2000, not yet sent (window 1)
  r.clock.synced = true;
  r.clock.now = 2500;
  r.pump();
  r.deliver();
  REQUIRE(r.rx.complete.size() == 2u);
  ChunkHeader h0 = std::get<3>(r.rx.complete[0]);
  ChunkHeader h1 = std::get<3>(r.rx.complete[1]);
  CHECK_EQ(h0.flags, 0);       // was already on the wire: stays unsynced
  CHECK_EQ(h0.capture_ms, 0u);
  CHECK_EQ(h1.flags, kFlagClockSynced);
  CHECK_EQ(h1.capture_ms, 2000u + r.clock.wall_offset);  // back-dated to its capture time
  CHECK_EQ(r.rx.errors, 0);  // all chunks of a frame agree on the header
}

TEST(capture_limit_and_done) {
  NodeConfig c = Rig::config();
  c.capture_limit = 3;
  Rig r(c);
  for (int i = 0; i < 5; ++i) r.camera.frames.push_back(fakes::make_jpeg(100, i));
  r.node.on_connected();
  for (int i = 0; i < 10 && !r.node.done(); ++i) {
    r.node.tick();
    r.pump(20);
    r.clock.now += 1000;
  }
  CHECK(r.node.done());
  CHECK_EQ(r.node.stats().frames_captured, 3u);
  CHECK_EQ(r.node.uplink().stats().frames_sent, 3u);
}

TEST(device_id_validation) {
  CHECK(valid_device_id("cam01"));
  CHECK(valid_device_id("A_b-9"));
  CHECK(valid_device_id(std::string(32, 'x')));
  CHECK(!valid_device_id(""));
  CHECK(!valid_device_id(std::string(33, 'x')));
  CHECK(!valid_device_id("cam/01"));
  CHECK(!valid_device_id("cam+"));
  CHECK(!valid_device_id("cam 1"));
}

TEST(status_is_republished_periodically_while_connected) {
  NodeConfig c = Rig::config();
  c.status_period_ms = 5000;
  Rig r(c);
  r.node.on_connected();
  r.node.tick();
  CHECK_EQ(r.mqtt.on("/status").size(), 1u);
  r.clock.now += 4999;
  r.node.tick();
  CHECK_EQ(r.mqtt.on("/status").size(), 1u);
  r.clock.now += 1;
  r.node.tick();
  CHECK_EQ(r.mqtt.on("/status").size(), 2u);
  r.node.on_disconnected();
  r.clock.now += 10000;
  r.node.tick();  // offline: nothing
  CHECK_EQ(r.mqtt.on("/status").size(), 2u);
  CHECK_EQ(r.node.publish_status(), -1);
}

TEST(window_spans_frames_and_frames_go_out_in_order) {
  Rig r(Rig::config(1000, 4));
  r.camera.frames.push_back(fakes::make_jpeg(1500, 1));  // 2 chunks
  r.camera.frames.push_back(fakes::make_jpeg(2500, 2));  // 3 chunks
  r.node.capture_now();
  r.clock.now += 1000;
  r.node.capture_now();
  r.node.on_connected();
  r.node.tick();
  auto f = r.mqtt.on("/frame");
  REQUIRE(f.size() == 4u);  // both chunks of frame 0, then the first two of frame 1
  CHECK_EQ(read_header(f[0]->payload.data()).frame_seq, 0u);
  CHECK_EQ(read_header(f[1]->payload.data()).frame_seq, 0u);
  CHECK_EQ(read_header(f[2]->payload.data()).frame_seq, 1u);
  CHECK_EQ(read_header(f[3]->payload.data()).chunk_index, 1);
  CHECK_EQ(r.node.uplink().inflight(), 4u);
  r.pump();
  CHECK_EQ(r.node.uplink().stats().frames_sent, 2u);
}
