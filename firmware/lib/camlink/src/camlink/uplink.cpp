#include "camlink/uplink.h"

#include <algorithm>

namespace camlink {

Uplink::Uplink(MqttPublisher& mqtt, Clock& clock, FrameQueue& queue, std::string frame_topic,
               uint32_t boot_id, UplinkConfig cfg)
    : mqtt_(mqtt), clock_(clock), queue_(queue), topic_(std::move(frame_topic)),
      boot_id_(boot_id), cfg_(cfg) {
  if (cfg_.window == 0) cfg_.window = 1;
  if (cfg_.chunk_data == 0) cfg_.chunk_data = kDefaultChunkData;
  inflight_.reserve(cfg_.window);
  retired_.reserve(kMaxRetired);
  scratch_.reserve(kHeaderLen + cfg_.chunk_data);
}

uint16_t Uplink::first_unacked(const QueuedFrame& f) {
  uint16_t i = 0;
  while (i < f.chunk_count && f.acked(i)) ++i;
  return i;
}

void Uplink::retire(const InFlight& e, uint64_t now) {
  // The MQTT client may still deliver this publish and report its ack later (esp-mqtt
  // keeps it in its outbox). Remember the id so that ack is known as stale. Oldest
  // first out when full, and forgotten after a while (the client's outbox expires).
  retired_.erase(std::remove_if(retired_.begin(), retired_.end(),
                                [now](const Retired& r) { return now - r.at_ms > 120000; }),
                 retired_.end());
  if (retired_.size() >= kMaxRetired) retired_.erase(retired_.begin());
  for (uint32_t i = 0; i < e.acks_needed; ++i) retired_.push_back(Retired{e.msg_id, now});
}

void Uplink::retire_all(uint64_t now) {
  for (const auto& e : inflight_) retire(e, now);
  inflight_.clear();
}

uint32_t Uplink::claim_retired(int msg_id) {
  uint32_t n = 0;
  for (auto it = retired_.begin(); it != retired_.end();) {
    if (it->msg_id == msg_id) {
      it = retired_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

void Uplink::maybe_restart(QueuedFrame& f, uint64_t now) {
  if (cfg_.restart_after_ms == 0 || !f.gen_started || f.complete()) return;
  if (now - f.first_sent_ms < cfg_.restart_after_ms) return;
  // The receiver has given up on this frame's partial copy: start over, whole.
  ++f.generation;
  f.gen_started = false;
  for (auto& st : f.chunk_state)
    if (st == QueuedFrame::kAcked) st = QueuedFrame::kSent;
  f.n_acked = 0;
  f.next_send = 0;
  ++stats_.frames_restarted;
}

void Uplink::resync(uint64_t now) {
  retire_all(now);
  for (auto& f : queue_.frames()) {
    maybe_restart(f, now);
    f.next_send = first_unacked(f);
  }
}

void Uplink::on_connected() {
  connected_ = true;
  retry_at_ = 0;
  resync(clock_.mono_ms());
}

void Uplink::on_disconnected() {
  connected_ = false;
  retire_all(clock_.mono_ms());
}

void Uplink::on_published(int msg_id) {
  auto it = std::find_if(inflight_.begin(), inflight_.end(),
                         [msg_id](const InFlight& e) { return e.msg_id == msg_id; });
  if (it == inflight_.end()) {
    auto r = std::find_if(retired_.begin(), retired_.end(),
                          [msg_id](const Retired& x) { return x.msg_id == msg_id; });
    if (r != retired_.end()) {
      retired_.erase(r);  // one ack per outstanding publish with this id
      ++stats_.stale_acks;
    } else {
      ++stats_.unmatched_acks;
    }
    return;
  }
  if (it->acks_needed > 1) {
    // The id was reused while an older publish with it was outstanding: this ack may
    // be the older one's. Only the last of them proves the new publish arrived.
    --it->acks_needed;
    ++stats_.stale_acks;
    return;
  }
  InFlight e = *it;
  inflight_.erase(it);
  QueuedFrame* f = queue_.find(e.seq);
  if (f == nullptr || e.index >= f->chunk_count) return;
  if (e.gen != f->generation) {
    ++stats_.stale_acks;  // delivered into a partial frame the receiver has given up on
    return;
  }
  if (!f->acked(e.index)) {
    f->chunk_state[e.index] = QueuedFrame::kAcked;
    ++f->n_acked;
    ++stats_.chunks_acked;
  }
  if (f->complete()) {
    ++stats_.frames_sent;
    uint32_t seq = f->seq;
    queue_.remove(seq);
    uint64_t now = clock_.mono_ms();
    for (const auto& x : inflight_)
      if (x.seq == seq) retire(x, now);
    inflight_.erase(std::remove_if(inflight_.begin(), inflight_.end(),
                                   [seq](const InFlight& x) { return x.seq == seq; }),
                    inflight_.end());
  }
}

QueuedFrame* Uplink::next_frame(uint64_t now) {
  for (auto& f : queue_.frames()) {
    maybe_restart(f, now);
    while (f.next_send < f.chunk_count && f.acked(f.next_send)) ++f.next_send;
    if (f.next_send < f.chunk_count) return &f;
  }
  return nullptr;
}

void Uplink::freeze_header(QueuedFrame& f, uint64_t now) {
  if ((f.flags & kFlagClockSynced) == 0) {
    uint64_t wall = 0;
    if (clock_.wall_ms(&wall)) {
      uint64_t age = now >= f.mono_ms ? now - f.mono_ms : 0;
      if (wall > age) {
        f.capture_ms = wall - age;
        f.flags |= kFlagClockSynced;
      }
    }
  }
  f.header_frozen = true;
}

void Uplink::poll() {
  if (!connected_) return;
  uint64_t now = clock_.mono_ms();
  if (!inflight_.empty()) {
    uint64_t oldest = inflight_.front().sent_ms;
    for (const auto& e : inflight_) oldest = std::min(oldest, e.sent_ms);
    if (now - oldest >= cfg_.ack_timeout_ms) {
      ++stats_.ack_timeouts;
      resync(now);
    }
  }
  if (now < retry_at_) return;
  while (inflight_.size() < cfg_.window) {
    QueuedFrame* f = next_frame(now);
    if (f == nullptr) break;
    bool first_time = !f->header_frozen;
    if (first_time) freeze_header(*f, now);
    FrameMeta meta;
    meta.boot_id = boot_id_;
    meta.frame_seq = f->seq;
    meta.flags = f->flags;
    meta.capture_ms = f->capture_ms;
    meta.frame_len = static_cast<uint32_t>(f->data.size());
    meta.frame_crc32 = f->crc;
    uint16_t index = f->next_send;
    if (!build_chunk(meta, f->data.data(), cfg_.chunk_data, index, scratch_)) {
      // Cannot happen for a frame the node accepted; drop it rather than spin.
      queue_.remove(f->seq);
      continue;
    }
    int mid = mqtt_.publish(topic_.c_str(), scratch_.data(), scratch_.size(), 1, false);
    if (mid < 0) {
      ++stats_.publish_failures;
      retry_at_ = now + cfg_.retry_after_fail_ms;
      break;
    }
    // An id still outstanding (in flight or given up) for an older publish: every
    // publish with it acks once, so the new one counts only after all of them.
    uint32_t needed = 1;
    for (auto it = inflight_.begin(); it != inflight_.end();) {
      if (it->msg_id == mid) {
        needed += it->acks_needed;
        it = inflight_.erase(it);  // its chunk is resent by the ack timeout if need be
      } else {
        ++it;
      }
    }
    needed += claim_retired(mid);
    if (!f->gen_started) {
      f->gen_started = true;
      f->first_sent_ms = now;
    }
    if (f->chunk_state[index] == QueuedFrame::kSent) ++stats_.chunks_resent;
    f->chunk_state[index] = QueuedFrame::kSent;
    inflight_.push_back(InFlight{mid, f->seq, index, f->generation, now, needed});
    ++stats_.chunks_published;
    ++f->next_send;
  }
}

}  // namespace camlink
