"""Encoder throughput against two baselines measured in the same run.

The same N SVGA (800x600) JPEG frames, made here (a still scene with sensor noise and a
moving object, 4:2:2 like the ESP32's), are encoded three ways with the same libx264
preset, CRF and GOP:

* **encoder**: ``encoder.muxer.encode_video`` from the files (read, check, decode in a
  thread pool, convert, x264, MP4 with +faststart) - what the service does;
* **cli**: the ``ffmpeg`` command line over the same files (image2 demuxer);
* **floor**: PyAV x264 + mux of frames decoded and converted beforehand (pure encode,
  the best the encoder could do with the same x264).

Each is run ``--repeat`` times; the best time counts. Printed: fps of each and the
ratios encoder/cli (above 1: faster than the CLI) and encoder/floor (1.0: decoding is
completely hidden behind x264).

Then (unless ``--no-service``) the real service: a broker and ``python -m encoder``
with the same preset/CRF/GOP; the frames are laid out as a sealed batch (manifest,
docs/storage.md) and its ready event is published; the clock runs from that publish to
the video event's arrival at a subscriber (encode, verify, thumbnail, sidecar, fsyncs,
purge, publish), ``--repeat`` batches one after the other.

    python bench/bench_encode.py --frames 300 --preset veryfast --crf 23
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoder.muxer import (
    EncodeOptions,
    FrameDecoder,
    FrameInput,
    encode_video,
    probe_video,
)

W, H = 800, 600


def make_frames(n: int, folder: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([(xx * 255 // W), (yy * 255 // H), ((xx + yy) * 255 // (W + H))],
                    axis=-1).astype(np.float32)
    for _ in range(12):  # some static "furniture" with edges
        x0, y0 = rng.integers(0, W - 80), rng.integers(0, H - 80)
        base[y0:y0 + rng.integers(20, 200), x0:x0 + rng.integers(20, 200)] = rng.integers(
            0, 255, 3)
    paths = []
    for i in range(n):
        img = base * (0.9 + 0.1 * np.sin(i / 40))  # slow light change
        x = (i * 7) % (W - 60)
        img[250:310, x:x + 60] = (230, 40, 40)  # a moving object
        img += rng.normal(0, 3, img.shape)  # sensor noise
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            buf, format="JPEG", quality=80, subsampling=1)
        p = folder / f"img{i:05d}.jpg"
        p.write_bytes(buf.getvalue())
        paths.append(p)
    return paths


def run_encoder(paths: list[Path], out: Path, opts: EncodeOptions) -> float:
    frames = [FrameInput(ts_ms=i * 1000, path=p) for i, p in enumerate(paths)]
    t = time.perf_counter()
    res = encode_video(frames, out, opts)
    elapsed = time.perf_counter() - t
    assert res.frames_written == len(paths), res
    return elapsed


def run_cli(folder: Path, n: int, out: Path, opts: EncodeOptions) -> float:
    cmd = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-framerate", str(opts.fps),
           "-i", str(folder / "img%05d.jpg"), "-frames:v", str(n), "-c:v", "libx264",
           "-preset", opts.preset, "-crf", str(opts.crf), "-g", str(opts.gop),
           "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(out)]
    if opts.threads:
        cmd[-1:-1] = ["-threads", str(opts.threads)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def predecode(paths: list[Path]) -> list[av.VideoFrame]:
    dec = FrameDecoder((W, H))
    out = []
    for p in paths:
        f = dec(FrameInput(ts_ms=0, path=p))
        assert not isinstance(f, str)
        out.append(f)
    return out


def run_floor(frames: list[av.VideoFrame], out: Path, opts: EncodeOptions) -> float:
    from fractions import Fraction  # noqa: PLC0415

    rate = Fraction(opts.fps).limit_denominator(1001)
    t = time.perf_counter()
    with av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.gop_size = opts.gop
        s.codec_context.thread_count = opts.threads
        s.options = {"preset": opts.preset, "crf": str(opts.crf)}
        for i, f in enumerate(frames):
            f.pts = i
            f.time_base = 1 / rate
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--crf", type=int, default=23)
    ap.add_argument("--gop", type=int, default=60)
    ap.add_argument("--threads", type=int, default=0, help="x264 threads, 0 = auto")
    ap.add_argument("--decode-threads", type=int, default=0, help="0 = one per CPU")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-service", action="store_true", help="skip ready -> video timing")
    args = ap.parse_args()
    if shutil.which("ffmpeg") is None:
        print("ffmpeg command line not found; install ffmpeg", file=sys.stderr)
        return 2
    opts = EncodeOptions(fps=30, preset=args.preset, crf=args.crf, gop=args.gop,
                         threads=args.threads, decode_threads=args.decode_threads)
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        paths = make_frames(args.frames, folder)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{args.frames} frames {W}x{H}, {mb:.1f} MB of JPEG, made in "
              f"{time.perf_counter() - t:.1f}s; preset={args.preset} crf={args.crf} "
              f"gop={args.gop} cpus={len(os.sched_getaffinity(0))}")
        decoded = predecode(paths)
        best = {"encoder": float("inf"), "cli": float("inf"), "floor": float("inf")}
        outs = {k: folder / f"{k}.mp4" for k in best}
        for _ in range(args.repeat):
            # Interleaved, so a slow moment of the machine hits all three alike.
            best["encoder"] = min(best["encoder"], run_encoder(paths, outs["encoder"], opts))
            best["cli"] = min(best["cli"], run_cli(folder, args.frames, outs["cli"], opts))
            best["floor"] = min(best["floor"], run_floor(decoded, outs["floor"], opts))
        for name, out in outs.items():
            info = probe_video(out)
            assert info.frames == args.frames, (name, info)
            fps = args.frames / best[name]
            print(f"{name:8s} {best[name]:7.3f}s {fps:8.1f} fps  "
                  f"{out.stat().st_size / 1e3:8.0f} kB")
        enc_fps = args.frames / best["encoder"]
        print(f"encoder/cli   speed ratio {best['cli'] / best['encoder']:.2f}x "
              f"(>1: encoder faster than the ffmpeg CLI)")
        print(f"encoder/floor speed ratio {best['floor'] / best['encoder']:.2f}x "
              f"(1.0: decoding fully hidden behind x264); encoder {enc_fps:.1f} fps")
        cli_ver = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True,
                                 check=False).stdout.split("\n")[0]
        print(f"note: CLI is '{cli_ver}'; PyAV {av.__version__} bundles its own FFmpeg/x264")
        if not args.no_service:
            ready_to_video([p.read_bytes() for p in paths], args)
    return 0


def ready_to_video(jpegs: list[bytes], args: argparse.Namespace) -> None:
    """The encoder service: ready event published -> video event received, per batch."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415

    from bench.common import bench_broker, load, machine, pct  # noqa: PLC0415
    from camstack.jpegs import write_batch  # noqa: PLC0415
    from camstack.mqttwait import Collector  # noqa: PLC0415
    from camstack.procs import ServiceProcess, service_config  # noqa: PLC0415

    print(f"\nencoder service, ready -> video event: {machine()}")
    with bench_broker() as (broker, tmp):
        for acc in ("encoder-bench", "ingestor-bench", "operator-bench"):
            broker.add_service(acc)
        root = tmp / "store"
        root.mkdir()
        cfg = service_config(broker, "encoder-bench", root, tmp / "enc.toml",
                             encode={"preset": args.preset, "crf": args.crf, "gop": args.gop,
                                     "threads": args.threads,
                                     "decode_threads": args.decode_threads},
                             metrics={"enabled": False, "port": 0})
        enc = ServiceProcess("encoder", cfg, tmp / "enc.log").start()
        try:
            enc.wait_event("encoder_ready", 30)
            pub = broker.client("ingestor-bench", broker.service_password("ingestor-bench"),
                                client_id="ingestor-bench")
            holder: list[Collector] = []
            sub = broker.client("operator-bench", broker.service_password("operator-bench"),
                                client_id="operator-bench",
                                before_connect=lambda c: holder.append(Collector(c)))
            col = holder[0]
            col.subscribe("cam/benchcam/video")
            times: list[float] = []
            for r in range(args.repeat):
                event = write_batch(root, "benchcam", jpegs, counter=r + 1,
                                    start_ms=1_795_515_300_000 + r * 3_600_000)
                t0 = time.perf_counter()
                pub.publish("cam/benchcam/ready", json.dumps(event), qos=1)
                batch = str(event["batch"])

                def has_video(ms: list[mqtt.MQTTMessage], b: str = batch) -> bool:
                    return any(json.loads(m.payload).get("batch") == b for m in ms)

                assert col.wait_for(has_video, 300), "no video"
                times.append(time.perf_counter() - t0)
                print(f"  batch {r + 1}: {len(jpegs)} frames, ready -> video event "
                      f"{times[-1]:.2f} s ({len(jpegs) / times[-1]:.0f} frames/s)")
            print(f"({load()})")
            print(f"ready -> video event: p50 {pct(times, 50):.2f} s, max {max(times):.2f} s "
                  f"over {len(times)} batches of {len(jpegs)} SVGA frames")
            for c in (pub, sub):
                c.disconnect()
                c.loop_stop()
        finally:
            enc.stop()


if __name__ == "__main__":
    raise SystemExit(main())
