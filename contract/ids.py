"""Names that travel on the wire and land in paths: device ids, topic prefixes, batches.

Every pattern is matched whole (``fullmatch``): a pattern ending in ``$`` also accepts a
trailing newline, and a device id with a newline at its end once got through.
"""

from __future__ import annotations

import re

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
"""A device id: the MQTT username, the client id, a topic level and a folder name."""

TOPIC_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""The first topic level of device topics (``cam``)."""

SAFE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""A name used as one path component (a batch name as a ready event carries it)."""


def is_device_id(value: object) -> bool:
    """Whether ``value`` is a valid device id."""
    return isinstance(value, str) and DEVICE_ID_RE.fullmatch(value) is not None


def is_safe_name(value: object) -> bool:
    """Whether ``value`` is safe as one path component (no dots, slashes, spaces)."""
    return isinstance(value, str) and SAFE_NAME_RE.fullmatch(value) is not None
