"""Camera chunks in, MP4 out: the real ingestor and the real encoder on one storage root."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from camstack.brokerproc import BrokerHandle
from camstack.jpegs import make_jpeg
from camstack.mqttwait import Collector
from camstack.procs import ServiceProcess, service_config
from contract.codec import split_frame
from encoder.muxer import probe_video

pytestmark = pytest.mark.integration

T0 = 1795515300000


def uid() -> str:
    return uuid.uuid4().hex[:6]


def test_device_frames_become_videos_and_frames_are_purged(broker: BrokerHandle,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "store"
    ing_account, enc_account, op = f"ingestor-{uid()}", f"encoder-{uid()}", f"operator-{uid()}"
    for a in (ing_account, enc_account, op):
        broker.add_service(a)
    ing = ServiceProcess("ingestor", service_config(
        broker, ing_account, root, tmp_path / "ing.toml", ingest={"frames_per_video": 6},
        mqtt={"session_expiry_s": 120}), tmp_path / "ing.log").start()
    enc_cfg = service_config(broker, enc_account, root, tmp_path / "enc.toml",
                             encode={"preset": "ultrafast"}, mqtt={"session_expiry_s": 120})
    enc_cfg.write_text(f'share_group = "enc-{uid()}"\n' + enc_cfg.read_text())
    enc = ServiceProcess("encoder", enc_cfg, tmp_path / "enc.log").start()
    try:
        ing.wait_event("ingestor_ready", 30)
        enc.wait_event("encoder_ready", 30)
        d = f"cam{uid()}"
        watcher = broker.client(op, client_id=op)
        col = Collector(watcher)
        col.subscribe(f"cam/{d}/video")
        dev = broker.client(d, broker.add_device(d), client_id=d)
        jpegs = [make_jpeg(320, 240, i) for i in range(12)]
        infos = []
        for seq, j in enumerate(jpegs):
            for chunk in split_frame(j, boot_id=0xCAFE, frame_seq=seq, capture_ms=T0 + seq * 500,
                                     clock_synced=True, chunk_data=4000):
                infos.append(dev.publish(f"cam/{d}/frame", chunk, qos=1))
        for i in infos:
            i.wait_for_publish(15)
        assert col.wait_for(lambda ms: len(ms) >= 2, 60), enc.log_path.read_text()[-2000:]
        events = sorted((json.loads(m.payload) for m in col.messages), key=lambda e: e["batch"])
        assert [e["batch"] for e in events] == [f"{d}-20261124T101500Z-0001",
                                                f"{d}-20261124T101503Z-0002"]
        for n, e in enumerate(events):
            assert (e["frames"], e["frames_skipped"], e["codec"]) == (6, 0, "h264")
            assert e["first_capture_ms"] == T0 + 6 * n * 500
            assert e["last_capture_ms"] == T0 + (6 * n + 5) * 500
            info = probe_video(root / e["location"])
            assert (info.codec, info.frames, info.width, info.height) == ("h264", 6, 320, 240)
            assert json.loads((root / e["location"]).with_suffix(".json").read_text()) == e
        # Every frame went into a video and then away: nothing is left in frames/ or batches/
        # but the (empty) device folder.
        assert not list((root / "frames").rglob("*.jpg"))
        assert list((root / "batches").rglob("*")) == [root / "batches" / d]
        assert enc.stop() == 0
        assert ing.stop() == 0
        for c in (dev, watcher):
            c.disconnect()
            c.loop_stop()
    finally:
        enc.stop()
        ing.stop()
