"""The contract's JSON messages and files as typed, frozen values (docs/protocol.md).

Each type has ``to_json()`` (what its producer writes) and ``parse()`` (what its consumer
accepts), and a hypothesis test feeds one into the other (tests/unit/test_contract.py):

* :class:`Manifest` — ``manifest.json`` of a sealed batch (ingestor → encoder, on disk);
* :class:`ReadyEvent` — ``<prefix>/<id>/ready`` (ingestor → encoders);
* :class:`VideoEvent` — ``<prefix>/<id>/video``, retained, and the video's ``.json``
  sidecar (encoder → monitor, people);
* :class:`Status` — ``<prefix>/<id>/status`` of a device and ``svc/<name>/status`` of a
  service (retained; their last wills say ``{"state":"offline"}``).

Parsers never trust a field: every number is range-checked, every name matched whole,
every path rebuilt from its names, and JSON nesting errors are caught.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from contract.errors import ContractError
from contract.ids import is_device_id, is_safe_name
from contract.layout import FRAME_FILE_RE, batch_location
from contract.topics import parse_device_topic

CONTRACT_VERSION = 1
MAX_MS = 2**63 - 1
"""Largest time or count a manifest or event may carry (a signed 64-bit integer)."""
MAX_U32 = 2**32 - 1


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _loads(raw: bytes | str) -> Any:
    # RecursionError: deeply nested JSON ("[[[[…") exhausts the parser's stack;
    # ValueError also covers integers past Python's digit limit.
    return json.loads(raw)


# ------------------------------------------------------------------- ready events
class Malformed(StrEnum):
    """Why a ready event was refused (a metric label)."""

    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    BAD_VERSION = "bad_version"
    BAD_FIELD = "bad_field"
    BAD_LOCATION = "bad_location"
    TOPIC_MISMATCH = "topic_mismatch"


class MalformedEventError(ContractError):
    """An event that cannot be acted upon.

    Attributes:
        reason: The category, a metric label.
        detail: What exactly was wrong, for the log.
    """

    def __init__(self, reason: Malformed, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class BadManifestError(ContractError):
    """A batch manifest that is unreadable or contradicts the contract."""


def _event_object(payload: bytes) -> dict[str, Any]:
    """The JSON object of an event of this contract version, or MalformedEventError."""
    try:
        obj = _loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedEventError(Malformed.BAD_JSON, str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise MalformedEventError(Malformed.NOT_OBJECT, type(obj).__name__)
    if obj.get("v") != CONTRACT_VERSION or isinstance(obj.get("v"), bool):
        raise MalformedEventError(Malformed.BAD_VERSION, repr(obj.get("v"))[:50])
    return obj


def _int_field(obj: Mapping[str, Any], key: str, *, minimum: int = 0) -> int:
    value = obj.get(key)
    # bool is an int in Python; a JSON true is not a count.
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_MS:
        raise MalformedEventError(Malformed.BAD_FIELD, f"{key} must be an integer >= {minimum}")
    return value


@dataclass(frozen=True)
class ReadyEvent:
    """A sealed batch, announced to the encoders."""

    device: str
    batch: str
    frames: int
    first_capture_ms: int
    last_capture_ms: int

    @property
    def location(self) -> str:
        """``batches/<device>/<batch>``, relative to the storage root."""
        return batch_location(self.device, self.batch)

    @classmethod
    def of(cls, manifest: Manifest) -> ReadyEvent:
        """The event announcing ``manifest``'s batch."""
        return cls(manifest.device, manifest.batch, len(manifest.frames),
                   manifest.first_capture_ms, manifest.last_capture_ms)

    def to_obj(self) -> dict[str, Any]:
        """The JSON object."""
        return {"v": CONTRACT_VERSION, "device": self.device, "batch": self.batch,
                "frames": self.frames, "first_capture_ms": self.first_capture_ms,
                "last_capture_ms": self.last_capture_ms, "location": self.location}

    def to_json(self) -> bytes:
        """The payload."""
        return _dumps(self.to_obj())

    @classmethod
    def parse(cls, topic: str, payload: bytes, prefix: str) -> ReadyEvent:
        """Validate a ready event against the contract and the topic it came on.

        ``location`` must be exactly ``batches/<device>/<batch>`` with both names made of
        safe characters, so no event can point outside the storage root.

        Args:
            topic: The topic, ``<prefix>/<id>/ready``.
            payload: Raw payload.
            prefix: Topic prefix.

        Returns:
            The event.

        Raises:
            MalformedEventError: With the reason.
        """
        obj = _event_object(payload)
        device, batch, location = obj.get("device"), obj.get("batch"), obj.get("location")
        if not is_device_id(device):
            raise MalformedEventError(Malformed.BAD_FIELD, "device")
        if not is_safe_name(batch):
            raise MalformedEventError(Malformed.BAD_FIELD, "batch")
        assert isinstance(device, str) and isinstance(batch, str)
        frames = _int_field(obj, "frames")
        first = _int_field(obj, "first_capture_ms")
        last = _int_field(obj, "last_capture_ms")
        if last < first:
            raise MalformedEventError(Malformed.BAD_FIELD,
                                      "last_capture_ms before first_capture_ms")
        if not isinstance(location, str) or location != batch_location(device, batch):
            raise MalformedEventError(Malformed.BAD_LOCATION, repr(location)[:200])
        if parse_device_topic(topic, prefix) != (device, "ready"):
            raise MalformedEventError(Malformed.TOPIC_MISMATCH, f"{topic} vs device {device}")
        return cls(device, batch, frames, first, last)


# ------------------------------------------------------------------- manifests
@dataclass(frozen=True)
class ManifestFrame:
    """One frame of a batch, in video order.

    ``file`` and ``ts_ms`` are required; the rest is what the ingestor knew of the
    frame (older or hand-made manifests may leave it out).
    """

    file: str
    ts_ms: int
    crc32: int | None = None
    size: int | None = None
    boot_id: int | None = None
    frame_seq: int | None = None
    capture_ms: int | None = None
    clock_synced: bool | None = None

    def to_obj(self) -> dict[str, Any]:
        """The manifest entry."""
        obj: dict[str, Any] = {"file": self.file, "ts_ms": self.ts_ms}
        for key, value in (("boot_id", self.boot_id), ("frame_seq", self.frame_seq),
                           ("capture_ms", self.capture_ms), ("clock_synced", self.clock_synced),
                           ("bytes", self.size), ("crc32", self.crc32)):
            if value is not None:
                obj[key] = value
        return obj


def _manifest_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MS:
        raise BadManifestError(f"{where}: {key} must be a non-negative integer")
    return value


def _optional_int(obj: Mapping[str, Any], key: str, where: str, maximum: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise BadManifestError(f"{where}: {key} must be an integer in 0..{maximum}")
    return value


def _frame(item: object, where: str) -> ManifestFrame:
    if not isinstance(item, dict):
        raise BadManifestError(f"{where}: not an object")
    file = item.get("file")
    if not isinstance(file, str) or not FRAME_FILE_RE.fullmatch(file) or ".." in file:
        raise BadManifestError(f"{where}: bad file name {str(file)[:100]!r}")
    synced = item.get("clock_synced")
    if synced is not None and not isinstance(synced, bool):
        raise BadManifestError(f"{where}: clock_synced must be true or false")
    return ManifestFrame(
        file=file, ts_ms=_manifest_int(item, "ts_ms", where),
        crc32=_optional_int(item, "crc32", where, MAX_U32),
        size=_optional_int(item, "bytes", where, MAX_MS),
        boot_id=_optional_int(item, "boot_id", where, MAX_U32),
        frame_seq=_optional_int(item, "frame_seq", where, MAX_U32),
        capture_ms=_optional_int(item, "capture_ms", where, MAX_MS),
        clock_synced=synced)


@dataclass(frozen=True)
class Manifest:
    """A sealed batch's ``manifest.json``: its frames in video order."""

    device: str
    batch: str
    frames: tuple[ManifestFrame, ...]
    first_capture_ms: int
    last_capture_ms: int
    sealed_ms: int | None = None

    def to_obj(self) -> dict[str, Any]:
        """The JSON object (docs/storage.md)."""
        obj: dict[str, Any] = {
            "v": CONTRACT_VERSION, "device": self.device, "batch": self.batch,
            "frames": [f.to_obj() for f in self.frames],
            "first_capture_ms": self.first_capture_ms, "last_capture_ms": self.last_capture_ms}
        if self.sealed_ms is not None:
            obj["sealed_ms"] = self.sealed_ms
        return obj

    def to_json(self) -> bytes:
        """The file's contents."""
        return _dumps(self.to_obj())

    @classmethod
    def parse(cls, raw: bytes, device: str, batch: str) -> Manifest:
        """Validate a batch's ``manifest.json``.

        Args:
            raw: File contents.
            device: The device folder the batch lives in.
            batch: The batch folder's name.

        Returns:
            The manifest, frames in video order.

        Raises:
            BadManifestError: Unreadable, or not the manifest of this batch.
        """
        try:
            obj = _loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise BadManifestError(f"not JSON: {str(exc)[:200]}") from None
        if not isinstance(obj, dict):
            raise BadManifestError("not an object")
        if obj.get("v") != CONTRACT_VERSION or isinstance(obj.get("v"), bool):
            raise BadManifestError(f"unsupported version {str(obj.get('v'))[:20]!r}")
        if obj.get("device") != device or obj.get("batch") != batch:
            raise BadManifestError(f"names {str(obj.get('device'))[:40]!r}/"
                                   f"{str(obj.get('batch'))[:140]!r}, found in {device}/{batch}")
        items = obj.get("frames")
        if not isinstance(items, list):
            raise BadManifestError("frames must be a list")
        frames = tuple(_frame(item, f"frames[{i}]") for i, item in enumerate(items))
        if len({f.file for f in frames}) != len(frames):
            raise BadManifestError("a frame file is listed twice")
        first = _manifest_int(obj, "first_capture_ms", "manifest")
        last = _manifest_int(obj, "last_capture_ms", "manifest")
        if last < first:
            raise BadManifestError("last_capture_ms before first_capture_ms")
        sealed = _optional_int(obj, "sealed_ms", "manifest", MAX_MS)
        return cls(device, batch, frames, first, last, sealed)


# ------------------------------------------------------------------- video events
@dataclass(frozen=True)
class VideoEvent:
    """A finished video: the retained ``<prefix>/<id>/video`` and the ``.json`` sidecar."""

    device: str
    batch: str
    location: str
    frames: int
    frames_skipped: int
    duration_s: float
    size: int
    first_capture_ms: int
    last_capture_ms: int
    codec: str = "h264"

    def to_obj(self) -> dict[str, Any]:
        """The JSON object."""
        return {
            "v": CONTRACT_VERSION, "device": self.device, "batch": self.batch,
            "location": self.location, "frames": self.frames,
            "frames_skipped": self.frames_skipped, "duration_s": round(self.duration_s, 3),
            "bytes": self.size, "codec": self.codec,
            "first_capture_ms": self.first_capture_ms, "last_capture_ms": self.last_capture_ms,
        }

    def to_json(self) -> bytes:
        """The payload (and the sidecar's contents)."""
        return _dumps(self.to_obj())

    @classmethod
    def parse(cls, payload: bytes) -> VideoEvent:
        """Validate a video event.

        Raises:
            MalformedEventError: With the reason.
        """
        obj = _event_object(payload)
        device, batch = obj.get("device"), obj.get("batch")
        location, codec = obj.get("location"), obj.get("codec")
        if not is_device_id(device) or not is_safe_name(batch):
            raise MalformedEventError(Malformed.BAD_FIELD, "device or batch")
        assert isinstance(device, str) and isinstance(batch, str)
        if (not isinstance(location, str) or not location.startswith(f"videos/{device}/")
                or ".." in location or len(location) > 300 or not location.isprintable()):
            raise MalformedEventError(Malformed.BAD_LOCATION, repr(location)[:200])
        if not isinstance(codec, str) or not is_safe_name(codec):
            raise MalformedEventError(Malformed.BAD_FIELD, "codec")
        duration = obj.get("duration_s")
        if (not isinstance(duration, int | float) or isinstance(duration, bool)
                or not math.isfinite(duration) or not 0 <= duration <= MAX_U32):
            raise MalformedEventError(Malformed.BAD_FIELD, "duration_s")
        first = _int_field(obj, "first_capture_ms")
        last = _int_field(obj, "last_capture_ms")
        if last < first:
            raise MalformedEventError(Malformed.BAD_FIELD,
                                      "last_capture_ms before first_capture_ms")
        return cls(device, batch, location, _int_field(obj, "frames"),
                   _int_field(obj, "frames_skipped"), float(duration), _int_field(obj, "bytes"),
                   first, last, codec)


# ------------------------------------------------------------------- statuses
MAX_STATUS_FIELDS = 64
MAX_TEXT = 120
MAX_JSON_INT = 2**53
"""Beyond this an integer is not a count anybody could mean (and a float no longer holds
it exactly): such a field is dropped where it enters."""

ONLINE = "online"
OFFLINE = "offline"
UNKNOWN = "unknown"


def safe_text(value: object, limit: int = MAX_TEXT) -> str:
    """``value`` as one line of plain text a terminal or log shows as it is.

    Control and format characters (escape sequences, carriage returns, bidirectional
    overrides) become ``?``, so a device cannot clear a screen or fake a line of a
    report; longer text is cut at ``limit`` with an ellipsis.

    Args:
        value: Anything; formatted with ``str``.
        limit: Longest result in characters.

    Returns:
        The cleaned text.
    """
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    if text.isprintable():
        return text
    # isprintable() is False for Unicode's "Other" and "Separator" classes, space aside.
    return "".join(c if c.isprintable() else "?" for c in text)


def _clean_scalar(value: object) -> object | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -MAX_JSON_INT <= value <= MAX_JSON_INT else None
    if isinstance(value, float):
        return value if math.isfinite(value) and abs(value) <= MAX_JSON_INT else None
    if isinstance(value, str):
        return safe_text(value)
    return None


def _key_ok(key: object) -> bool:
    return isinstance(key, str) and 0 < len(key) <= 64 and key.isprintable()


def clean_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a status JSON object that are safe to keep.

    Every value is checked where it enters: numbers must be finite and within ±2^53,
    text is made printable and bounded, objects keep one level of such scalars, lists and
    deeper nesting are dropped, keys must be short printable names, and at most 64
    fields are kept. A status from any device therefore cannot make a rule, a table or a
    metric overflow, nor smuggle terminal control sequences into a report.

    Args:
        obj: A parsed JSON object.

    Returns:
        The cleaned copy.
    """
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if len(out) >= MAX_STATUS_FIELDS:
            break
        if not _key_ok(key):
            continue
        if isinstance(value, dict):
            inner = {k: v for k, v in ((k, _clean_scalar(v)) for k, v in
                                       list(value.items())[:MAX_STATUS_FIELDS])
                     if v is not None and _key_ok(k)}
            out[key] = inner
            continue
        clean = _clean_scalar(value)
        if clean is not None or value is None:
            out[key] = clean
    return out


@dataclass(frozen=True)
class Status:
    """A retained device or service status: its state and its other (cleaned) fields.

    The contract names the device fields (``rssi``, ``heap_free``, ``queue``,
    ``interval_ms``…, docs/protocol.md) and allows extras; a service reports its own
    counters. Both are kept as cleaned scalars in ``fields``.
    """

    state: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        """A field's value, or None."""
        return self.fields.get(key)

    def to_obj(self) -> dict[str, Any]:
        """The JSON object."""
        return {**self.fields, "state": self.state}

    def to_json(self) -> bytes:
        """The payload."""
        return _dumps(self.to_obj())

    @classmethod
    def parse(cls, payload: bytes) -> Status | None:
        """A status from its payload; None when it is not a JSON object at all.

        An empty payload (a deleted retained message) and a missing or non-text
        ``state`` give state ``unknown``; fields are cleaned (:func:`clean_fields`).
        """
        if not payload:
            return None
        try:
            obj = _loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        fields = clean_fields(obj)
        state = fields.pop("state", None)
        return cls(state if isinstance(state, str) and state else UNKNOWN, fields)
