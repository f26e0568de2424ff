"""The encode job: a small typed JSON reference to one sealed batch's pack. Pure.

A job names a batch and where its pack is; it carries no frames. The same value is the
``batch_ref`` every runner hands to the encode function: the JetStream worker parses it
from a job message, the Lambda handler from an SQS message body or an S3 key.

``{"v":1,"device":"cam01","batch":"cam01-20261124T101500Z-0001",
"pack_key":"packs/cam01/cam01-20261124T101500Z-0001.tar","sha256":null}``

The parser trusts no field: size bounded before decoding, ids matched whole with
``contract.ids``, the pack key rebuilt from the ids and compared, duplicate JSON keys
refused, nesting errors caught.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from contract.ids import is_device_id, is_safe_name
from jobqueue.errors import MalformedJobError

JOB_VERSION = 1
MAX_JOB_BYTES = 4096
DEFAULT_PACK_PREFIX = "packs/"
PACK_SUFFIX = ".tar"
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]{1,64}/")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_KEY_RE = re.compile(r"(?P<prefix>[A-Za-z0-9_-]{1,64}/)(?P<device>[^/]{1,64})/"
                     r"(?P<batch>[^/]{1,160})\.tar")
_FIELDS = {"v", "device", "batch", "pack_key", "sha256"}


class Outcome(StrEnum):
    """What the encode function made of one job (every runner maps it the same way)."""

    OK = "ok"
    """Done, or found done already (a redelivery): acknowledge."""
    RETRY = "retry"
    """Failed for now (store or database away): deliver again later."""
    POISON = "poison"
    """Can never succeed (corrupt pack, bad manifest): quarantine now."""


def pack_key(device: str, batch: str, prefix: str = DEFAULT_PACK_PREFIX) -> str:
    """``<prefix><device>/<batch>.tar`` (docs/storage.md), after checking the names.

    Raises:
        MalformedJobError: If a name or the prefix is not safe.
    """
    if not _PREFIX_RE.fullmatch(prefix):
        raise MalformedJobError("bad_prefix", repr(prefix[:80]))
    if not is_device_id(device):
        raise MalformedJobError("bad_device", repr(str(device)[:80]))
    if not is_safe_name(batch):
        raise MalformedJobError("bad_batch", repr(str(batch)[:80]))
    return f"{prefix}{device}/{batch}{PACK_SUFFIX}"


def parse_pack_key(key: str, prefix: str = DEFAULT_PACK_PREFIX) -> tuple[str, str]:
    """The ``(device, batch)`` of a pack key; anything else is refused.

    Only ``<prefix><device>/<batch>.tar`` with a valid device id and a safe batch name
    passes: no ``..``, no extra or empty segment, no other prefix or suffix.

    Raises:
        MalformedJobError: If ``key`` is not exactly such a key.
    """
    if not isinstance(key, str) or len(key) > 512:
        raise MalformedJobError("bad_key", "not a string of at most 512 characters")
    m = _KEY_RE.fullmatch(key)
    if m is None or m["prefix"] != prefix:
        raise MalformedJobError("bad_key", repr(key[:120]))
    device, batch = m["device"], m["batch"]
    if not is_device_id(device) or not is_safe_name(batch):
        raise MalformedJobError("bad_key", repr(key[:120]))
    return device, batch


@dataclass(frozen=True, slots=True)
class EncodeJob:
    """One batch to encode: its ids, its pack key and (optionally) the pack's SHA-256."""

    device: str
    batch: str
    pack_key: str
    sha256: str | None = None

    @classmethod
    def for_batch(cls, device: str, batch: str, *, sha256: str | None = None,
                  prefix: str = DEFAULT_PACK_PREFIX) -> EncodeJob:
        """The job of a batch whose pack is at the usual key.

        Raises:
            MalformedJobError: If a value is not valid.
        """
        job = cls(device, batch, pack_key(device, batch, prefix), sha256)
        job.check(prefix)
        return job

    @property
    def msg_id(self) -> str:
        """The de-duplication id (``Nats-Msg-Id``): ``<device>/<batch>``."""
        return f"{self.device}/{self.batch}"

    def check(self, prefix: str = DEFAULT_PACK_PREFIX) -> None:
        """Validate every field and that ``pack_key`` is the batch's own key.

        Raises:
            MalformedJobError: Naming what is wrong.
        """
        expected = pack_key(self.device, self.batch, prefix)
        if self.pack_key != expected:
            raise MalformedJobError("bad_key", f"{self.pack_key[:120]!r} is not {expected!r}")
        if self.sha256 is not None and not (
                isinstance(self.sha256, str) and _SHA256_RE.fullmatch(self.sha256)):
            raise MalformedJobError("bad_sha256", repr(str(self.sha256)[:80]))

    def to_json(self) -> bytes:
        """The job message (compact, sorted keys)."""
        obj: dict[str, Any] = {"v": JOB_VERSION, "device": self.device, "batch": self.batch,
                               "pack_key": self.pack_key, "sha256": self.sha256}
        return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes | str, *, prefix: str = DEFAULT_PACK_PREFIX,
              max_bytes: int = MAX_JOB_BYTES) -> EncodeJob:
        """Parse a job message, trusting nothing.

        Raises:
            MalformedJobError: With a short ``reason`` (a metric label).
        """
        data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
        if not isinstance(data, bytes | bytearray):
            raise MalformedJobError("bad_json", "not bytes")
        if len(data) > max_bytes:
            raise MalformedJobError("too_large", f"{len(data)} bytes > {max_bytes}")
        try:
            obj = json.loads(bytes(data).decode("utf-8"), object_pairs_hook=_no_dupes)
        except (ValueError, RecursionError, UnicodeDecodeError) as e:
            raise MalformedJobError("bad_json", str(e)[:120]) from None
        if not isinstance(obj, dict):
            raise MalformedJobError("not_object")
        if obj.get("v") != JOB_VERSION or isinstance(obj.get("v"), bool):
            raise MalformedJobError("bad_version", repr(obj.get("v"))[:40])
        extra = set(obj) - _FIELDS
        if extra:
            raise MalformedJobError("bad_field", f"unknown {sorted(extra)[:5]}")
        device, batch, key = obj.get("device"), obj.get("batch"), obj.get("pack_key")
        sha = obj.get("sha256")
        if not isinstance(device, str) or not isinstance(batch, str) \
                or not isinstance(key, str) or not (sha is None or isinstance(sha, str)):
            raise MalformedJobError("bad_field", "device, batch, pack_key must be strings")
        job = cls(device, batch, key, sha)
        job.check(prefix)
        return job


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:40]!r}")
        out[k] = v
    return out


EncodeFn = Callable[[EncodeJob], Outcome]
"""The encode function every runner calls: idempotent per batch (docs/scaling.md)."""
QuarantineFn = Callable[[EncodeJob, int], None]
"""Records a job that will never succeed, with how often it was delivered."""
