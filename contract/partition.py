"""Device partitions of the NATS cluster engine (docs/scaling.md), stdlib only.

With ``broker.engine = "nats"`` the broker maps every frame subject
``<prefix>.<device>.frame`` (MQTT topic ``<prefix>/<device>/frame``) to
``p.<n>.<prefix>.<device>.frame`` with NATS's ``{{partition(N,1)}}`` transform, so an
ingestor that owns partition ``n`` subscribes the MQTT filter
``p/<n>/<prefix>/+/frame``. The partition of a device is what the server computes:
FNV-1a (32 bit) of the device id, modulo ``N`` (nats-server ``subject_transform.go``;
checked against a real server in tests/integration/test_nats_cluster.py). Cameras are
unchanged: they still publish ``<prefix>/<id>/frame``.
"""

from __future__ import annotations

from contract.ids import is_device_id

PARTITIONS = 64
"""Partitions of the frame subjects. Fixed: changing it moves most devices."""

PARTITION_PREFIX = "p"
"""First level of a partitioned frame topic."""

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bit (Go's ``hash/fnv.New32a``).

    Args:
        data: Bytes to hash.

    Returns:
        The hash.
    """
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def device_partition(device: str, partitions: int = PARTITIONS) -> int:
    """The partition NATS's ``{{partition(partitions,1)}}`` gives ``device``.

    Args:
        device: The device id (the topic's second level).
        partitions: Number of partitions.

    Returns:
        ``0 <= n < partitions``.
    """
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return fnv1a_32(device.encode()) % partitions


def partition_frame_topic(prefix: str, partition: int | str, device: str) -> str:
    """``p/<partition>/<prefix>/<device>/frame`` (``+`` allowed in filters)."""
    return f"{PARTITION_PREFIX}/{partition}/{prefix}/{device}/frame"


def partition_frame_filter(prefix: str, partition: int) -> str:
    """The MQTT filter of one partition's frames: ``p/<n>/<prefix>/+/frame``."""
    return partition_frame_topic(prefix, partition, "+")


def all_partitions_frame_filter(prefix: str) -> str:
    """The MQTT filter of every partition's frames: ``p/+/<prefix>/+/frame``."""
    return partition_frame_topic(prefix, "+", "+")


def parse_partition_frame_topic(
    topic: str, prefix: str, partitions: int = PARTITIONS
) -> tuple[int, str] | None:
    """``(partition, device)`` of a partitioned frame topic, or None.

    The device id comes from the topic, as for ``<prefix>/<id>/frame``; the partition
    must be the one the device hashes to (a topic naming another partition is refused).

    Args:
        topic: A topic name.
        prefix: The device topic prefix.
        partitions: Number of partitions.

    Returns:
        The partition and a valid device id, or None.
    """
    parts = topic.split("/")
    if (len(parts) != 5 or parts[0] != PARTITION_PREFIX or parts[2] != prefix
            or parts[4] != "frame" or not is_device_id(parts[3])):
        return None
    if not (parts[1].isascii() and parts[1].isdigit()) or parts[1] != str(int(parts[1])):
        return None
    n = int(parts[1])
    if n != device_partition(parts[3], partitions):
        return None
    return n, parts[3]
