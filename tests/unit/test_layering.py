"""The protocol core stays sans-I/O (style.md, principle 1): importing it pulls in
no event loop, transport, database or MQTT library."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import shared

IO_SUBPACKAGE = "shared.aio"
"""The one part of shared/ that does asyncio I/O (drivers, channels, DB thread)."""
PURE_MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(shared.__path__, "shared.")
    if m.name != IO_SUBPACKAGE and not m.name.startswith(IO_SUBPACKAGE + ".")
)
FORBIDDEN = ["asyncio", "websockets", "aioquic", "sqlalchemy", "paho", "aiohttp"]


def test_every_module_of_shared_outside_its_io_subpackage_is_pure() -> None:
    assert "shared.protocol.session" in PURE_MODULES and "shared.resources.task" in PURE_MODULES
    assert not any(m.startswith("shared.aio") for m in PURE_MODULES)


def test_pure_modules_import_no_io_library() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in PURE_MODULES)
        + f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"pure modules imported: {out.stdout.strip()}"
