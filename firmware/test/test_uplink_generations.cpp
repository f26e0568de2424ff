// Review defects 2 and 4: a frame is resent whole after an outage longer than the
// receiver's partial-frame timeout, and acks are matched by message id and
// generation so a stale ack never marks the wrong chunk delivered.
#include <string>

#include "camlink/node.h"
#include "camlink/uplink.h"
#include "fakes.h"
#include "tinytest.h"

using namespace camlink;

namespace {

struct GenRig {
  fakes::Clock clock;
  fakes::Mqtt mqtt;
  fakes::Camera camera;
  fakes::Sys sys;
  fakes::Receiver rx;
  CamNode node;
  size_t fed = 0;

  explicit GenRig(NodeConfig cfg) : node(std::move(cfg), clock, mqtt, camera, sys) {}

  static NodeConfig config(size_t window, uint32_t ack_timeout_ms, uint32_t restart_ms) {
    NodeConfig c;
    c.device_id = "cam01";
    c.boot_id = 7;
    c.camera.interval_ms = 1000000;  // one capture (at start) is all these tests need
    c.uplink.chunk_data = 1000;
    c.uplink.window = window;
    c.uplink.ack_timeout_ms = ack_timeout_ms;
    c.uplink.restart_after_ms = restart_ms;
    return c;
  }
  void deliver() {
    for (; fed < mqtt.log.size(); ++fed)
      if (mqtt.log[fed].topic == "cam/cam01/frame") rx.feed(mqtt.log[fed].payload);
  }
  int mid_of_chunk(size_t nth_frame_publish) const {
    return mqtt.on("/frame")[nth_frame_publish]->mid;
  }
  uint16_t index_of(size_t nth_frame_publish) const {
    return read_header(mqtt.on("/frame")[nth_frame_publish]->payload.data()).chunk_index;
  }
  void ack_all() {
    while (!mqtt.unacked.empty()) {
      int mid = mqtt.unacked.front();
      mqtt.unacked.pop_front();
      node.on_published(mid);
    }
  }
  void pump() {
    for (int i = 0; i < 1000; ++i) {
      node.tick();
      deliver();
      if (mqtt.unacked.empty() && node.uplink().idle()) return;
      ack_all();
    }
  }
};

}  // namespace

TEST(defect2_frame_resent_whole_after_outage_longer_than_partial_timeout) {
  GenRig r(GenRig::config(4, 60000, 10000));
  r.camera.frames.push_back(fakes::make_jpeg(5500, 1));  // 6 chunks
  r.node.on_connected();
  r.node.tick();  // status + chunks 0..3
  r.deliver();
  // The broker acknowledges status and chunks 0, 1 (they reached the ingestor) ...
  for (int i = 0; i < 3; ++i) {
    r.node.on_published(r.mqtt.unacked.front());
    r.mqtt.unacked.pop_front();
  }
  // ... then the link dies for longer than the ingestor's partial timeout.
  r.node.on_disconnected();
  r.mqtt.unacked.clear();
  r.clock.now += 10000;
  CHECK_EQ(r.rx.expire(), 1u);  // the ingestor dropped the partial frame
  r.node.on_connected();
  r.node.tick();
  auto frames = r.mqtt.on("/frame");
  REQUIRE(frames.size() == 8u);
  CHECK_EQ(r.index_of(4), 0);  // whole frame again, from chunk 0
  CHECK_EQ(r.node.uplink().stats().frames_restarted, 1u);
  CHECK_EQ(r.node.uplink().stats().frames_sent, 0u);
  r.pump();
  REQUIRE(r.rx.complete.size() == 1);
  CHECK(std::get<2>(r.rx.complete[0]) == fakes::make_jpeg(5500, 1));
  CHECK_EQ(r.node.uplink().stats().frames_sent, 1u);
  CHECK_EQ(r.rx.errors, 0);
}

TEST(defect2_short_outage_resends_only_unacked_chunks) {
  GenRig r(GenRig::config(4, 60000, 10000));
  r.camera.frames.push_back(fakes::make_jpeg(5500, 2));
  r.node.on_connected();
  r.node.tick();
  for (int i = 0; i < 3; ++i) {
    r.node.on_published(r.mqtt.unacked.front());
    r.mqtt.unacked.pop_front();
  }
  r.node.on_disconnected();
  r.mqtt.unacked.clear();
  r.clock.now += 9999;  // just under the restart threshold
  r.node.on_connected();
  r.node.tick();
  REQUIRE(r.mqtt.on("/frame").size() == 8u);
  CHECK_EQ(r.index_of(4), 2);
  CHECK_EQ(r.node.uplink().stats().frames_restarted, 0u);
}

TEST(defect2_restart_disabled_with_zero) {
  GenRig r(GenRig::config(4, 60000, 0));
  r.camera.frames.push_back(fakes::make_jpeg(5500, 2));
  r.node.on_connected();
  r.node.tick();
  for (int i = 0; i < 3; ++i) {
    r.node.on_published(r.mqtt.unacked.front());
    r.mqtt.unacked.pop_front();
  }
  r.node.on_disconnected();
  r.mqtt.unacked.clear();
  r.clock.now += 1000000;
  r.node.on_connected();
  r.node.tick();
  REQUIRE(r.mqtt.on("/frame").size() == 8u);
  CHECK_EQ(r.index_of(4), 2);
}

TEST(defect2_slow_link_restarts_frame_and_old_generation_acks_do_not_count) {
  GenRig r(GenRig::config(4, 600000, 10000));
  r.camera.frames.push_back(fakes::make_jpeg(5500, 3));  // 6 chunks
  r.node.on_connected();
  r.node.tick();  // status + chunks 0..3
  r.node.on_published(r.mqtt.log[0].mid);  // status
  int m0 = r.mid_of_chunk(0), m1 = r.mid_of_chunk(1), m2 = r.mid_of_chunk(2),
      m3 = r.mid_of_chunk(3);
  r.node.on_published(m0);
  r.node.on_published(m1);
  r.node.on_published(m2);
  r.node.tick();  // chunks 4, 5
  REQUIRE(r.mqtt.on("/frame").size() == 6u);
  int m4 = r.mid_of_chunk(4);
  r.clock.now += 10000;  // chunks 3..5 still unacked: the receiver gave the frame up
  r.node.tick();         // generation 1 starts; one free slot -> chunk 0
  REQUIRE(r.mqtt.on("/frame").size() == 7u);
  CHECK_EQ(r.index_of(6), 0);
  CHECK_EQ(r.node.uplink().stats().frames_restarted, 1u);
  // Late acks of generation-0 publishes: delivered into a partial frame the receiver
  // no longer has, so they must not count.
  r.node.on_published(m3);
  r.node.on_published(m4);
  CHECK_EQ(r.node.uplink().stats().stale_acks, 2u);
  const QueuedFrame& f = r.node.queue().frames().front();
  CHECK_EQ(f.n_acked, 0);
  CHECK_EQ(f.generation, 1u);
  r.pump();
  CHECK_EQ(r.node.uplink().stats().frames_sent, 1u);
  CHECK(r.node.queue().empty());
}

TEST(defect4_reused_message_id_needs_the_ack_of_every_outstanding_publish) {
  GenRig r(GenRig::config(1, 600000, 0));
  r.camera.frames.push_back(fakes::make_jpeg(1500, 4));  // 2 chunks
  r.node.on_connected();
  r.node.tick();  // status (mid 1), chunk 0 (mid 2)
  r.node.on_published(1);
  REQUIRE(r.mqtt.on("/frame").size() == 1u);
  CHECK_EQ(r.mid_of_chunk(0), 2);
  // The link breaks: the MQTT client keeps mid 2 in its outbox and will deliver it
  // later; the core gives the publish up (retired) and resends chunk 0 ...
  r.node.on_disconnected();
  CHECK_EQ(r.node.uplink().retired(), 1u);
  r.node.on_connected();
  r.mqtt.next_mid = 1;  // ... and the client hands out id 2 again for that resend
  r.node.tick();        // status (mid 1), chunk 0 (mid 2)
  REQUIRE(r.mqtt.on("/frame").size() == 2u);
  CHECK_EQ(r.mid_of_chunk(1), 2);
  CHECK_EQ(r.node.uplink().retired(), 0u);  // folded into the new publish
  // The first ack of id 2 may be the old outbox copy's: chunk 0 is not delivered yet.
  r.node.on_published(2);
  CHECK_EQ(r.node.uplink().stats().stale_acks, 1u);
  CHECK_EQ(r.node.uplink().stats().chunks_acked, 0u);
  r.node.tick();
  CHECK_EQ(r.mqtt.on("/frame").size(), 2u);  // the window is still taken by chunk 0
  // The second ack of id 2 proves the resend arrived too.
  r.node.on_published(2);
  CHECK_EQ(r.node.uplink().stats().chunks_acked, 1u);
  r.node.tick();
  REQUIRE(r.mqtt.on("/frame").size() == 3u);
  CHECK_EQ(r.index_of(2), 1);
}

TEST(defect4_late_ack_of_a_given_up_publish_is_stale_not_unmatched) {
  GenRig r(GenRig::config(2, 5000, 0));
  r.camera.frames.push_back(fakes::make_jpeg(1500, 5));  // 2 chunks
  r.node.on_connected();
  r.node.tick();  // status 1, chunks mids 2, 3
  r.node.on_published(1);
  r.clock.now += 5000;
  r.node.tick();  // ack timeout: given up (retired) and resent as mids 4, 5
  CHECK_EQ(r.node.uplink().stats().ack_timeouts, 1u);
  CHECK_EQ(r.node.uplink().retired(), 2u);
  uint64_t unmatched = r.node.uplink().stats().unmatched_acks;  // the status ack
  r.node.on_published(2);
  r.node.on_published(3);
  CHECK_EQ(r.node.uplink().stats().stale_acks, 2u);
  CHECK_EQ(r.node.uplink().stats().unmatched_acks, unmatched);
  CHECK_EQ(r.node.uplink().stats().frames_sent, 0u);
  r.node.on_published(4);
  r.node.on_published(5);
  CHECK_EQ(r.node.uplink().stats().frames_sent, 1u);
}
