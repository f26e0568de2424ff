"""``camstack videos | batches | catalog migrate | verify | store lifecycle``.

They read the encoder's settings file that the tooling renders
(``<data>/config/encoder.toml``: its ``catalog``, ``store``, ``storage`` and
``signing_key_file``), or the one given with ``--service-config``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from broker.layout import Layout
from camstack.stack import config_dir
from catalog import BatchRow, CatalogError, VideoRow, open_catalog
from catalog.signing import load_or_create_key, load_public_key, verify_video
from config.loader import load_or_exit
from config.logging import configure_logging
from config.settings import BrokerSettings, EncoderSettings
from objstore import NotFoundError, ObjectStoreError, open_store
from objstore.lifecycle import apply_pack_lifecycle

COMMANDS = ("videos", "batches", "catalog", "verify", "store")
_REL_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_catalog_commands(sub: Any) -> None:
    """Add the catalog and object-store commands to ``camstack``'s subparsers."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--service-config", type=Path,
                       help="settings file with [catalog]/[store] (default: the encoder's "
                       "in the data folder)")

    v = sub.add_parser("videos", help="list videos from the catalog")
    common(v)
    v.add_argument("--device", help="only this camera")
    v.add_argument("--since", help="captured since: Unix ms, ISO time, or 30m / 12h / 7d ago")
    v.add_argument("--limit", type=int, default=1000, help="at most this many, newest first")
    v.add_argument("--json", action="store_true", help="one JSON object per line")
    b = sub.add_parser("batches", help="list batches and their state from the catalog")
    common(b)
    b.add_argument("--device", help="only this camera")
    b.add_argument("--since", help="captured since: Unix ms, ISO time, or 30m / 12h / 7d ago")
    b.add_argument("--state", choices=["sealed", "uploaded", "encoding", "encoded", "purged",
                                       "quarantined"], help="only batches in this state")
    b.add_argument("--limit", type=int, default=1000, help="at most this many, newest first")
    b.add_argument("--json", action="store_true", help="one JSON object per line")
    c = sub.add_parser("catalog", help="the metadata database")
    csub = c.add_subparsers(dest="catalog_cmd", required=True, metavar="ACTION")
    m = csub.add_parser("migrate", help="apply the numbered SQL migrations (idempotent)")
    common(m)
    ver = sub.add_parser("verify", help="is a video intact? (SHA-256 + Ed25519 signature)")
    common(ver)
    ver.add_argument("video", help="its location (videos/<id>/<date>/<name>.mp4) or "
                     "<device>/<batch>")
    s = sub.add_parser("store", help="the object store")
    ssub = s.add_subparsers(dest="store_cmd", required=True, metavar="ACTION")
    lc = ssub.add_parser("lifecycle", help="make packs expire after N days (S3 lifecycle "
                         "rule on the pack prefix; a one-shot sweep on the filesystem)")
    common(lc)
    lc.add_argument("--days", type=int, help="default: store.pack_expire_days")


def parse_since(text: str | None, now_ms: int | None = None) -> int | None:
    """``--since``: Unix ms, an ISO date/time (UTC unless it says), or ``<n>[smhd]`` ago.

    Raises:
        ValueError: When it is none of those.
    """
    if text is None:
        return None
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    if text.isdigit():
        return int(text)
    m = _REL_RE.fullmatch(text)
    if m:
        return max(0, now - int(float(m.group(1)) * _UNITS[m.group(2)] * 1000))
    t = dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _settings(args: argparse.Namespace, broker: BrokerSettings) -> EncoderSettings:
    path = args.service_config
    if path is None:
        default = config_dir(Layout(broker.data_dir.resolve())) / "encoder.toml"
        path = default if default.exists() else None
    return load_or_exit(EncoderSettings, path)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_rows(rows: list[VideoRow] | list[BatchRow], as_json: bool, kind: str) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(r.model_dump(mode="json"), sort_keys=True))
        return
    if not rows:
        print(f"no {kind}")
        return
    for r in rows:
        if isinstance(r, VideoRow):
            print(f"{_iso(r.first_capture_ms)}  {r.device:<12} {r.frames:>5} frames "
                  f"{r.duration_s:>7.1f}s {r.bytes:>10} B  {r.location}")
        else:
            print(f"{_iso(r.first_capture_ms)}  {r.device:<12} {r.state.value:<11} "
                  f"{r.frames:>5} frames  attempts {r.attempts}  {r.batch}"
                  + (f"  ({r.error[:80]})" if r.error else ""))


def run_catalog_command(args: argparse.Namespace, broker: BrokerSettings) -> int:
    """Run one of :data:`COMMANDS`; returns the exit status."""
    settings = _settings(args, broker)
    # Output is the listing: log lines (warnings only) go to stderr.
    configure_logging("warning", "console")
    try:
        if args.cmd == "store":
            store = open_store(settings.store)
            try:
                days = args.days or settings.store.pack_expire_days
                res = apply_pack_lifecycle(store, settings.store.pack_prefix, days)
            finally:
                store.close()
            if res.backend == "s3":
                print(f"lifecycle rule on {res.prefix}: expire after {days} days "
                      f"({len(res.rules)} rule(s) on the bucket)")
            else:
                print(f"swept {res.prefix}: {len(res.deleted)} object(s) older than {days} "
                      "days deleted")
            return 0
        cat = open_catalog(settings.catalog, migrate=args.cmd == "catalog")
        try:
            if args.cmd == "catalog":
                print(f"catalog ({cat.backend}) at schema version {cat.schema_version()}")
                return 0
            if args.cmd == "videos":
                _print_rows(cat.list_videos(device=args.device, since_ms=parse_since(args.since),
                                            limit=args.limit), args.json, "videos")
                return 0
            if args.cmd == "batches":
                _print_rows(cat.list_batches(device=args.device,
                                             since_ms=parse_since(args.since),
                                             state=args.state, limit=args.limit),
                            args.json, "batches")
                return 0
            return _verify(args.video, settings, cat)
        finally:
            cat.close()
    except (CatalogError, ObjectStoreError, ValueError) as exc:
        print(f"camstack {args.cmd}: {exc}", file=sys.stderr)
        return 2


def _verify(ref: str, settings: EncoderSettings, cat: Any) -> int:
    if ref.startswith("videos/"):
        row = cat.video_by_location(ref)
    elif ref.count("/") == 1:
        device, batch = ref.split("/")
        row = cat.get_video(device, batch)
    else:
        raise ValueError("give a location videos/... or <device>/<batch>")
    if row is None:
        print(f"{ref}: no such video in the catalog")
        return 2
    pub_file = settings.signing_key_file.with_suffix(".pub")
    if pub_file.is_file():
        public = load_public_key(pub_file.read_bytes())
    else:
        public = load_or_create_key(settings.signing_key_file).public_key()
    try:
        if settings.store.backend == "s3":
            store = open_store(settings.store)
            try:
                data = store.get_bytes(row.location)
            finally:
                store.close()
        else:
            data = (settings.storage.root / row.location).read_bytes()
    except (NotFoundError, FileNotFoundError):
        print(f"{row.location}: MISSING (the catalog has a row, the store has no file)")
        return 1
    res = verify_video(data, row, public)
    if res.ok:
        print(f"{row.location}: intact (sha256 {res.file_sha256}, signature valid, "
              "record as signed)")
        return 0
    print(f"{row.location}: ALTERED")
    for p in res.problems:
        print(f"  {p}")
    return 1
