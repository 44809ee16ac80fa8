"""What both daemons' entry points do after parsing arguments: log, run, map errors
to exit codes an init system understands (0 clean stop, 1 runtime failure)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from shared.errors import EdgesyncError


def run_daemon(name: str, log_level: str, main: Coroutine[Any, Any, None]) -> int:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(main)
    except EdgesyncError as exc:
        logging.getLogger(name).error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
