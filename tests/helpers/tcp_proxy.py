"""A TCP proxy on loopback that a test can break three ways: `cut` (abort every live
connection: the peers see a reset at once), `block` (cut, and refuse new ones), and
`blackhole` (keep every socket open and silently drop what either side sends, like a
link that died without a FIN or RST: only the protocol's keepalive can notice).
Runs its own event loop in a thread so it works beside daemons running as processes."""

from __future__ import annotations

import asyncio
import contextlib

from tests.helpers.loop_thread import LoopThreadProxy


class TcpProxy(LoopThreadProxy):
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        super().__init__()
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._blocked = False
        self._blackholed = False
        self.swallowed = 0
        """Bytes dropped while black-holed."""
        self._server: asyncio.Server | None = None

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if self._blackholed:  # read and drop: the sender never learns
                        self.swallowed += len(data)
                        continue
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)

    async def _cut(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        """Drop every live connection (both directions, no FIN: like a dead link)."""
        self._call(self._cut())

    def block(self) -> None:
        """Cut live connections and refuse new ones until `unblock()`."""
        self._blocked = True
        self.cut()

    def unblock(self) -> None:
        self._blocked = False

    def blackhole(self) -> None:
        """Stop forwarding in both directions; every socket stays open, nothing is closed."""
        self._blackholed = True

    def restore(self) -> None:
        """Forward again (on the connections that are still open)."""
        self._blackholed = False
