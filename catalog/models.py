"""Rows of the catalog as strict pydantic models: bad values are refused before SQL."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from catalog.errors import InvalidValueError

MAX_MS = 2**53
"""Largest time accepted (Unix ms): far beyond any real date, exact in a double."""

DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
BatchId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Millis = Annotated[int, Field(ge=0, le=MAX_MS)]
Location = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]+$")]


class BatchState(StrEnum):
    """Where a batch is. Transitions only move forward (see :data:`NEXT_FROM`)."""

    SEALED = "sealed"
    UPLOADED = "uploaded"
    ENCODING = "encoding"
    ENCODED = "encoded"
    PURGED = "purged"
    QUARANTINED = "quarantined"


NEXT_FROM: dict[BatchState, frozenset[BatchState]] = {
    BatchState.UPLOADED: frozenset({BatchState.SEALED}),
    BatchState.ENCODING: frozenset({BatchState.SEALED, BatchState.UPLOADED,
                                    BatchState.ENCODING}),
    BatchState.ENCODED: frozenset({BatchState.SEALED, BatchState.UPLOADED,
                                   BatchState.ENCODING}),
    BatchState.PURGED: frozenset({BatchState.ENCODED}),
    BatchState.QUARANTINED: frozenset({BatchState.SEALED, BatchState.UPLOADED,
                                       BatchState.ENCODING}),
}
"""For each target state, the states a batch may move to it from."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SealedBatch(_Row):
    """A batch as the ingestor seals it (``record_sealed``)."""

    device: DeviceId
    batch: BatchId
    frames: int = Field(ge=1, le=10_000_000)
    first_capture_ms: Millis
    last_capture_ms: Millis


class BatchRow(SealedBatch):
    """One row of ``batches``."""

    state: BatchState
    attempts: int = Field(ge=0, le=1_000_000)
    pack_key: Location | None = None
    pack_sha256: Sha256Hex | None = None
    pack_bytes: int | None = Field(default=None, ge=0, le=2**62)
    created_ms: Millis
    updated_ms: Millis
    error: str | None = Field(default=None, max_length=4000)


class VideoRow(_Row):
    """One row of ``videos``: what the encoder made of one batch."""

    device: DeviceId
    batch: BatchId
    location: Location
    thumbnail: Location | None = None
    frames: int = Field(ge=0, le=10_000_000)
    skipped: int = Field(ge=0, le=10_000_000)
    duration_s: float = Field(ge=0, le=1e9, allow_inf_nan=False)
    bytes: int = Field(ge=0, le=2**62)
    codec: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    first_capture_ms: Millis
    last_capture_ms: Millis
    sha256: Sha256Hex
    pack_sha256: Sha256Hex | None = None
    signature: str | None = Field(default=None, max_length=8192,
                                  pattern=r"^[A-Za-z0-9_=.-]+$")
    created_ms: Millis
    deleted_ms: Millis | None = None
    """When retention deleted the video's objects (``None``: it exists). Not signed."""


M = TypeVar("M", bound="_Row")


class DeviceRow(_Row):
    """One row of ``devices``."""

    id: DeviceId
    first_seen_ms: Millis
    last_seen_ms: Millis


class _Ids(_Row):
    device: DeviceId
    batch: BatchId


def check_ids(device: object, batch: object) -> tuple[str, str]:
    """Validate a (device, batch) pair given as plain arguments.

    Returns:
        The pair.

    Raises:
        InvalidValueError: Saying which value is wrong.
    """
    try:
        ids = _Ids(device=device, batch=batch)  # type: ignore[arg-type]
    except ValidationError as e:
        raise InvalidValueError(_explain(e)) from None
    return ids.device, ids.batch


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validated(model: type[M], data: dict[str, object]) -> M:
    """Build a row model, turning pydantic's error into :class:`InvalidValueError`.

    Raises:
        InvalidValueError: Naming the fields at fault.
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidValueError(f"{model.__name__}: {_explain(e)}") from None
