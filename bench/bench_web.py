"""p95 page times of the web page with 1,000 cameras and 100,000 videos in the catalog.

``python -m bench.bench_web [--cameras 1000] [--videos 100000] [--requests 200]``

A SQLite catalog is filled with ``--videos`` rows spread over ``--cameras`` cameras
(one transaction), the live model with one retained status and video event per camera,
and the real application (``web.app.create_app``) is served by uvicorn on loopback.
Each page is fetched ``--requests`` times by one keep-alive client with a valid
session; the baseline measured in the same run is ``/healthz`` (no template, no data).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

from catalog import open_catalog
from config.settings import CatalogSettings, HttpSettings, WebSettings
from contract.events import VideoEvent
from web.app import WebContext, create_app
from web.auth import Sessions
from web.live import LiveModel
from web.users import UsersFile

DAY0 = 1_795_515_300_000


def fill(catalog_path: Path, cameras: int, videos: int) -> None:
    cat = open_catalog(CatalogSettings(path=catalog_path))
    per = videos // cameras
    cols = ("device, batch, location, thumbnail, frames, skipped, duration_s, bytes, codec, "
            "first_capture_ms, last_capture_ms, sha256, pack_sha256, signature, created_ms")
    with cat.driver.transaction() as tx:
        for c in range(cameras):
            dev = f"cam{c:04d}"
            tx.execute("INSERT INTO devices (id, first_seen_ms, last_seen_ms) VALUES (:d, 0, 0)",
                       {"d": dev})
            for i in range(per):
                t = DAY0 + i * 600_000  # a 5-minute video every 10 minutes
                batch = f"{dev}-{i:06d}"
                p = {"device": dev, "batch": batch, "t": t, "l": t + 299_000,
                     "loc": f"videos/{dev}/2026-11-24/{batch}.mp4"}
                tx.execute("INSERT INTO batches (device, batch, state, attempts, frames, "
                           "first_capture_ms, last_capture_ms, created_ms, updated_ms) VALUES "
                           "(:device, :batch, 'encoded', 1, 300, :t, :l, :t, :t)", p)
                tx.execute(f"INSERT INTO videos ({cols}) VALUES (:device, :batch, :loc, NULL, "
                           "300, 0, 30.0, 2000000, 'h264', :t, :l, "
                           "'" + "0" * 64 + "', NULL, NULL, :t)", p)
    cat.close()


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cameras", type=int, default=1000)
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-web-"))
    t0 = time.perf_counter()
    fill(tmp / "catalog.sqlite3", args.cameras, args.videos)
    print(f"catalog: {args.videos} videos of {args.cameras} cameras in "
          f"{time.perf_counter() - t0:.1f} s")
    settings = WebSettings(
        storage={"root": tmp / "storage"}, catalog={"path": tmp / "catalog.sqlite3"},
        http=HttpSettings(port=0, users_file=tmp / "users.json",
                          session_secret_file=tmp / "session.key"))
    live = LiveModel("cam", "alerts")
    for c in range(args.cameras):
        dev = f"cam{c:04d}"
        live.apply(f"cam/{dev}/status", json.dumps({
            "state": "online" if c % 10 else "offline", "rssi": -60, "heap_free": 100_000,
            "queue": 0, "frames_sent": c}).encode(), DAY0)
        last = args.videos // args.cameras - 1
        live.apply(f"cam/{dev}/video", VideoEvent(
            dev, f"{dev}-{last:06d}", f"videos/{dev}/2026-11-24/{dev}-{last:06d}.mp4", 300, 0,
            30.0, 2_000_000, DAY0 + last * 600_000, DAY0 + last * 600_000 + 299_000
        ).to_json(), DAY0)
    users = UsersFile(tmp / "users.json")
    users.add("bench", "viewer", "bench-password")
    sessions = Sessions(b"k" * 32, 3600)
    cookie, _ = sessions.issue("bench", "viewer")
    cat = open_catalog(settings.catalog)
    ctx = WebContext(settings=settings, live=live, catalog=cat, users=users, sessions=sessions)
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=0,
                                           log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def timed(path: str) -> list[float]:
        out = []
        for _ in range(args.requests):
            t = time.perf_counter()
            conn.request("GET", path, headers={"Cookie": f"camstack_session={cookie}"})
            resp = conn.getresponse()
            body = resp.read()
            out.append(time.perf_counter() - t)
            assert resp.status == 200, (path, resp.status, body[:200])
        return out

    pages = ["/healthz", "/cameras", "/cameras?page=10", "/cameras?q=cam05",
             "/cameras?sick=1", "/cameras/cam0500", "/alerts", "/services"]
    timed("/cameras")  # warm-up (templates compiled)
    results = {p: timed(p) for p in pages}
    base = p95(results["/healthz"])
    print(f"{'page':<22} {'p50 ms':>8} {'p95 ms':>8} {'p95 / baseline':>15}")
    for p, s in results.items():
        print(f"{p:<22} {statistics.median(s) * 1000:8.2f} {p95(s) * 1000:8.2f} "
              f"{p95(s) / base:15.1f}")
    server.should_exit = True
    thread.join(10)
    cat.close()


if __name__ == "__main__":
    main()
