"""What both daemons' entry points do after parsing arguments: log, prepare their files,
run, and map errors to exit codes an init system understands (0 clean stop, 1 runtime
failure, 2 bad configuration or data dir)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from shared.errors import ConfigError, EdgesyncError

DAEMON_UMASK = 0o077
"""Files and dirs the daemons create are private, whatever umask they were started with."""


def print_error(prog: str, exc: Exception) -> None:
    """`PROG: message` on stderr, each line of a multi-problem error prefixed alike."""
    for line in str(exc).splitlines() or [""]:
        print(f"{prog}: {line}", file=sys.stderr)


def run_daemon(
    name: str,
    log_level: str,
    main: Callable[[], Coroutine[Any, Any, None]],
    prepare: Callable[[], None] | None = None,
) -> int:
    """Configure logging, set a private umask, run `prepare` (file modes), then `main()`.

    `prepare` may raise ConfigError (exit 2); `main` raising an EdgesyncError exits 1
    with its message logged, without a traceback.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.umask(DAEMON_UMASK)
    logger = logging.getLogger(name)
    try:
        if prepare is not None:
            prepare()
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    try:
        asyncio.run(main())
    except EdgesyncError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
