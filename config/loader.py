"""Load a settings model from TOML plus environment, with errors a person can act on."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)

CONFIG_ENV = "CAM_CONFIG"
"""Environment variable naming the TOML file when ``--config`` is not given."""


class ConfigError(Exception):
    """The configuration could not be read or is invalid.

    Attributes:
        problems: One ``"location: message"`` line per bad field.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None


def load_settings(model: type[S], path: Path | str | None = None, **overrides: Any) -> S:
    """Build ``model`` from a TOML file, ``CAM_`` environment variables and overrides.

    Args:
        model: The service's settings class.
        path: TOML file; defaults to ``$CAM_CONFIG`` when set, else no file.
        **overrides: Top-level sections merged over the file (used by tests and tools).

    Returns:
        The validated settings.

    Raises:
        ConfigError: With every invalid field's location and message.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    data: dict[str, Any] = _read_toml(Path(path)) if path is not None else {}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return model(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            problems.append(f"{loc}: {err['msg']}")
        raise ConfigError(problems) from None


def service_arguments(prog: str, description: str, argv: list[str] | None = None) -> Path | None:
    """The command line every service shares: ``--config FILE`` and ``--help``.

    ``--help`` prints the usage and exits 0 before anything starts.

    Args:
        prog: Program name for the usage line (``python -m ingestor``).
        description: Shown by ``--help``.
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The ``--config`` path, or None for ``$CAM_CONFIG`` / the built-in defaults.
    """
    p = argparse.ArgumentParser(prog=prog, description=description.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="settings TOML (default: $CAM_CONFIG, else the built-in defaults; "
                        "CAM_<SECTION>__<KEY> variables override either)")
    config: Path | None = p.parse_args(argv).config
    return config


def load_or_exit(model: type[S], path: Path | str | None = None) -> S:
    """Like :func:`load_settings`, but print every problem and exit 2 on failure.

    Args:
        model: The service's settings class.
        path: TOML file, or None for ``$CAM_CONFIG`` / defaults.

    Returns:
        The validated settings.
    """
    try:
        return load_settings(model, path)
    except ConfigError as exc:
        print(f"invalid configuration for {model.__name__}:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def to_toml(data: dict[str, Any], _prefix: str = "") -> str:
    """Nested dicts of scalars and lists as TOML (all a service config needs).

    Args:
        data: Tables are dicts; ``None`` values are left out.

    Returns:
        The TOML text.
    """
    scalars = [f"{k} = {_toml_value(v)}" for k, v in data.items()
               if not isinstance(v, dict) and v is not None]
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{_prefix}.{k}" if _prefix else k
            has_scalars = any(not isinstance(x, dict) for x in v.values())
            out += (f"\n[{name}]\n" if has_scalars else "") + to_toml(v, name)
    return out
