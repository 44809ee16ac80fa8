"""A UDP proxy on loopback for QUIC tests: drop or reorder a fraction of
datagrams, black-hole everything for a while, or move a client to a new
source port (what a NAT rebinding looks like). Runs its own loop in a thread."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from tests.helpers.loop_thread import LoopThreadProxy


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpProxy, client: tuple[str, int]) -> None:
        self.proxy = proxy
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.proxy._forward(data, lambda d: self.proxy._front_send(d, self.client))


class _Front(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.proxy._from_client(data, addr)


class UdpProxy(LoopThreadProxy):
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        loss: float = 0.0,
        reorder: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.target = (target_host, target_port)
        self.loss = loss
        self.reorder = reorder
        self.blocked = False
        super().__init__()
        self.forwarded = 0
        self.dropped = 0
        self._rng = random.Random(seed)
        self._front: asyncio.DatagramTransport | None = None
        self._upstreams: dict[Any, _Upstream] = {}

    async def _start(self) -> int:
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Front(self), local_addr=("127.0.0.1", 0)
        )
        self._front = transport
        return int(transport.get_extra_info("sockname")[1])

    async def _stop(self) -> None:
        for up in self._upstreams.values():
            if up.transport is not None:
                up.transport.close()
        if self._front is not None:
            self._front.close()

    def _from_client(self, data: bytes, addr: Any) -> None:
        up = self._upstreams.get(addr)
        if up is None:
            up = _Upstream(self, addr)
            self._upstreams[addr] = up
            self._loop.create_task(self._open(up, data))
            return
        if up.transport is not None:
            transport = up.transport
            self._forward(data, lambda d: transport.sendto(d, self.target))

    async def _open(self, up: _Upstream, first: bytes) -> None:
        await self._loop.create_datagram_endpoint(lambda: up, local_addr=("127.0.0.1", 0))
        transport = up.transport
        assert transport is not None
        self._forward(first, lambda d: transport.sendto(d, self.target))

    def _front_send(self, data: bytes, client: Any) -> None:
        if self._front is not None:
            self._front.sendto(data, client)

    def _forward(self, data: bytes, send: Any) -> None:
        if self.blocked or self._rng.random() < self.loss:
            self.dropped += 1
            return
        self.forwarded += 1
        if self._rng.random() < self.reorder:
            self._loop.call_later(0.005 + self._rng.random() * 0.02, send, data)
        else:
            send(data)

    def rebind_clients(self) -> None:
        """Give every client a new upstream source port: the server sees an address change."""

        def rebind() -> None:
            old = self._upstreams
            self._upstreams = {}
            for up in old.values():
                if up.transport is not None:
                    up.transport.close()

        self._loop.call_soon_threadsafe(rebind)
