"""PlatformIO pre-script: pick the device secrets header from $CAM_DEVICE.

    CAM_DEVICE=cam01 pio run -e esp32cam -t upload

defines CAM_SECRETS_FILE as the absolute path of firmware/secrets/cam01.h, which
firmware/src/secrets_select.h includes (only main.cpp sees the secrets). Without
CAM_DEVICE a git-ignored firmware/include/secrets.h is used if it exists.
"""

import os
import re
import sys

Import("env")  # type: ignore[name-defined]  # noqa: F821  (SCons global)

device = os.environ.get("CAM_DEVICE", "").strip()
project = env.subst("$PROJECT_DIR")  # type: ignore[name-defined]  # noqa: F821
secrets_dir = os.path.join(project, "firmware", "secrets")
fallback = os.path.join(project, "firmware", "include", "secrets.h")

if device:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", device):
        sys.stderr.write(f"CAM_DEVICE={device!r} is not a valid device id\n")
        env.Exit(1)  # type: ignore[name-defined]  # noqa: F821
    path = os.path.join(secrets_dir, device + ".h")
    if not os.path.isfile(path):
        known = sorted(f[:-2] for f in os.listdir(secrets_dir) if f.endswith(".h")) \
            if os.path.isdir(secrets_dir) else []
        sys.stderr.write(
            f"{path} not found. Provision it with `python -m broker device add {device}`.\n"
            f"Known devices: {', '.join(known) or 'none'}\n")
        env.Exit(1)  # type: ignore[name-defined]  # noqa: F821
    # A string macro: -DCAM_SECRETS_FILE=\"/abs/path/cam01.h\" (StringifyMacro where
    # the PlatformIO core provides it).
    stringify = getattr(env, "StringifyMacro", None)  # type: ignore[name-defined]  # noqa: F821
    value = stringify(path) if stringify else '\\"%s\\"' % path
    env.Append(CPPDEFINES=[("CAM_SECRETS_FILE", value)])  # type: ignore[name-defined]  # noqa: F821
    print(f"camstack: building for device {device} ({path})")
elif os.path.isfile(fallback):
    print(f"camstack: CAM_DEVICE not set, using {fallback}")
else:
    sys.stderr.write(
        "Set CAM_DEVICE=<device id> (firmware/secrets/<id>.h), e.g.\n"
        "  CAM_DEVICE=cam01 pio run -e esp32cam -t upload\n")
    env.Exit(1)  # type: ignore[name-defined]  # noqa: F821
