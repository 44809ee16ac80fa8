"""Structured concurrency that also runs on Python 3.10 (no asyncio.TaskGroup there).

Jetson Linux 6 ships Python 3.10, so edgecore avoids 3.11-only asyncio APIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def run_together(*coros: Coroutine[Any, Any, None], names: list[str]) -> None:
    """Run coroutines as named tasks until all end; if one raises, cancel the others
    and re-raise that exception itself (not wrapped in an ExceptionGroup).

    Cancelling the caller cancels every task and waits for them to finish.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    for task, name in zip(tasks, names, strict=True):
        task.set_name(name)
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
