"""The part both test proxies share: an event loop in a thread of its own, so a
proxy keeps forwarding while the test drives daemons that run as processes."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Self


class LoopThreadProxy:
    """Subclasses implement `_start()` (returns the listening port) and `_stop()`."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self.port = self._call(self._start())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> int:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError
