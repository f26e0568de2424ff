"""Object-store bench on a real SeaweedFS: pack upload vs a raw boto3 put, requests/frame.

    .venv/bin/python -m bench.bench_objstore [--frames 300] [--frame-bytes 50000] [--reps 7]

Ratios are measured in the same run against the same server, alternating the two
uploads so that load on the machine hits both alike:
- pack upload throughput (``S3Store.put_stream`` of the pack file, SHA-256 computed by
  the pack writer and verified by the store) / raw ``boto3 put_object`` of the same
  bytes (goal >= 0.8);
- object-store HTTP requests per frame for one batch (goal <= 0.01), counted with a
  botocore ``before-send`` hook (retries included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from camstack.servers import start_seaweedfs
from objstore import S3Store
from objstore.pack import PackReader, write_pack


def _frames(n: int, size: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    frames = [(f"frames/{1795515300000 + i * 1000:013d}_deadbeef_{i:010d}.jpg",
               b"\xff\xd8" + os.urandom(size - 4) + b"\xff\xd9") for i in range(n)]
    man = {"v": 1, "device": "cam01", "batch": "cam01-20261124T101500Z-0001",
           "sealed_ms": 1795515600123,
           "frames": [{"file": name, "boot_id": 3735928559, "frame_seq": i,
                       "capture_ms": 1795515300000 + i * 1000, "clock_synced": True,
                       "ts_ms": 1795515300000 + i * 1000, "bytes": len(b),
                       "crc32": zlib.crc32(b)} for i, (name, b) in enumerate(frames)],
           "first_capture_ms": 1795515300000, "last_capture_ms": 1795515300000 + n * 1000}
    return json.dumps(man).encode(), frames


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--frame-bytes", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-objstore-") as tmp:
        server = start_seaweedfs(Path(tmp) / "weed")
        try:
            store = S3Store(server.s3_settings(read_timeout_s=60))
            store.check()
            raw = server.client(read_timeout=60)
            requests = {"n": 0}

            def count(**_: Any) -> None:
                requests["n"] += 1

            store.client.meta.events.register("before-send.s3", count)

            man, frames = _frames(args.frames, args.frame_bytes)
            pack_path = Path(tmp) / "pack.tar"
            t = time.perf_counter()
            with pack_path.open("wb") as out:
                index = write_pack(out, man, frames)
            build_s = time.perf_counter() - t
            data = pack_path.read_bytes()
            mb = index.size / 1e6

            # Requests per frame: one batch's upload, then the encoder's read and delete.
            requests["n"] = 0
            with pack_path.open("rb") as src:
                store.put_stream("packs/cam01/batch.tar", src, sha256=index.sha256,
                                 size=index.size)
            upload_requests = requests["n"]
            with store.open("packs/cam01/batch.tar") as stream:
                got = sum(1 for _ in PackReader(stream).frames())
            assert got == args.frames
            store.delete("packs/cam01/batch.tar")
            total_requests = requests["n"]

            pack_mbs: list[float] = []
            raw_mbs: list[float] = []
            for i in range(args.reps):
                t = time.perf_counter()
                raw.put_object(Bucket=server.bucket, Key=f"raw/{i}.tar", Body=data)
                raw_mbs.append(mb / (time.perf_counter() - t))
                t = time.perf_counter()
                with pack_path.open("rb") as src:
                    store.put_stream(f"packs/{i}.tar", src, sha256=index.sha256,
                                     size=index.size)
                pack_mbs.append(mb / (time.perf_counter() - t))
            pack_med, raw_med = statistics.median(pack_mbs), statistics.median(raw_mbs)
            print(f"batch: {args.frames} frames x {args.frame_bytes} B = pack {index.size} B "
                  f"(built in {build_s * 1000:.1f} ms)")
            print(f"pack upload (S3Store.put_stream, ChecksumSHA256): {pack_med:.1f} MB/s "
                  f"median of {args.reps}")
            print(f"raw boto3 put_object, same bytes:                 {raw_med:.1f} MB/s")
            print(f"ratio pack/raw: {pack_med / raw_med:.2f} (goal >= 0.8)")
            print(f"requests per frame, upload only: {upload_requests}/{args.frames} = "
                  f"{upload_requests / args.frames:.4f} (goal <= 0.01)")
            print(f"requests per frame, upload + encoder GET + DELETE: {total_requests}/"
                  f"{args.frames} = {total_requests / args.frames:.4f}")
            store.close()
            raw.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
