"""TLS for the edge-facing transports: mutual-TLS contexts (the cloud CA only), and
giving the memory of finished TLS connections back to the OS."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import PKIError


def server_context(
    cert: Path, key: Path, ca: Path, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A server context that requires a client certificate issued by our CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise PKIError(
            f"cannot load the cloud's TLS material ({cert}, {key}, {ca}): {exc}"
        ) from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl, macOS: nothing to do there)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def return_freed_heap() -> bool:
    """Hand freed heap memory back to the OS (glibc `malloc_trim(0)`); False if unavailable."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is _UNSET:
        _MALLOC_TRIM = _find_malloc_trim()
    if _MALLOC_TRIM is None or not callable(_MALLOC_TRIM):
        return False
    _MALLOC_TRIM(0)
    return True


_UNSET: Any = object()
_MALLOC_TRIM: Any = _UNSET


class HeapTrimmer:
    """Returns the memory of finished TLS connections to the OS after a burst of them.

    Every TLS connection costs asyncio ~256 KiB of read buffer plus OpenSSL state. glibc
    keeps freed chunks of that size in its heap instead of unmapping them, so after a
    scan or a reconnect storm the cloud's RSS stays at its peak (measured: 1,000
    handshakes that stalled after their ClientHello left +300 MB). After `threshold`
    connections have ended, `malloc_trim(0)` runs once (in a thread: it takes ~50 ms for
    300 MB), at most every `min_interval` seconds, at least `delay` seconds after the
    release that crossed the threshold (so a burst is trimmed once, after it).
    """

    def __init__(
        self,
        threshold: int = 128,
        min_interval: float = 5.0,
        delay: float = 1.0,
        trim: Callable[[], bool] = return_freed_heap,
    ) -> None:
        self.threshold = threshold
        self.min_interval = min_interval
        self.delay = delay
        self._trim = trim
        self._released = 0
        self._next_allowed = 0.0
        self._task: asyncio.Task[None] | None = None
        self.trims = 0

    def note_release(self) -> None:
        """One TLS connection (or handshake attempt) has ended."""
        self._released += 1
        if self._released < self.threshold or self._task is not None:
            return
        loop = asyncio.get_running_loop()
        wait = max(self.delay, self._next_allowed - loop.time())
        self._task = loop.create_task(self._trim_after(wait), name="heap-trim")

    async def _trim_after(self, wait: float) -> None:
        try:
            await asyncio.sleep(wait)
            self._released = 0
            if await asyncio.to_thread(self._trim):
                self.trims += 1
            self._next_allowed = asyncio.get_running_loop().time() + self.min_interval
        finally:
            self._task = None

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def release_handshake(exc: BaseException) -> None:
    """Let a failed TLS handshake's memory go now, not at the next full garbage collection.

    The exception's traceback holds `loop.start_tls`'s frame, whose waiter future holds
    the exception: a reference cycle that keeps asyncio's SSLProtocol and its 256 KiB
    buffer alive until the cyclic collector runs, which for long-lived objects can be
    never in practice (measured: +300 MB per 1,000 stalled handshakes, not returned).
    Dropping the traceback breaks the cycle, so reference counting frees it at once.
    """
    exc.__traceback__ = None
    if exc.__context__ is not None:
        exc.__context__.__traceback__ = None
