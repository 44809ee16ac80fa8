"""The protocol core stays sans-I/O (style.md, principle 1): importing it pulls in
no event loop, transport, database or MQTT library."""

from __future__ import annotations

import subprocess
import sys

PURE_MODULES = [
    "shared.protocol.session",
    "shared.protocol.codec",
    "shared.protocol.framing",
    "shared.protocol.states",
    "shared.resources",
    "shared.runpolicy",
    "shared.backoff",
    "shared.config",
    "shared.pki",
    "shared.outbox",
    "shared.fencing",
    "shared.resume",
]
FORBIDDEN = ["asyncio", "websockets", "aioquic", "sqlalchemy", "paho", "aiohttp"]


def test_pure_modules_import_no_io_library() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in PURE_MODULES)
        + f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"pure modules imported: {out.stdout.strip()}"
