"""The in-memory Channel pair: order, backpressure, closes both ways, and injected faults."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from shared.aio.memory_channel import CloseInfo, MemoryChannel, channel_pair
from shared.errors import LinkBroken, LinkClosed, PeerClosed


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 5.0))


async def settle() -> None:
    """Let every runnable task run until it blocks."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_the_two_ends_name_their_peer_and_node() -> None:
    link = channel_pair(node="pi-7")
    assert (link.cloud.node, link.edge.node) == ("pi-7", "")
    assert link.cloud.peer == "memory:edge" and link.edge.peer == "memory:cloud"
    assert link.cloud.transport == link.edge.transport == "memory"


def test_frames_arrive_in_order_both_ways() -> None:
    async def main() -> None:
        link = channel_pair()
        await link.edge.send([b"hello", b"1"])
        await link.cloud.send([b"welcome"])
        await link.edge.send([b"2"])
        assert [await link.cloud.recv() for _ in range(3)] == [b"hello", b"1", b"2"]
        assert await link.edge.recv() == b"welcome"
        assert link.edge.frames_sent == 3 and link.cloud.frames_sent == 1

    run(main())


def test_send_waits_while_the_peer_queue_is_full() -> None:
    async def main() -> None:
        link = channel_pair(queue_size=2)
        await link.cloud.send([b"a", b"b"])  # fits exactly
        blocked = asyncio.ensure_future(link.cloud.send([b"c", b"d"]))
        await settle()
        assert not blocked.done() and link.edge.queued == 2
        assert await link.edge.recv() == b"a"
        await settle()
        assert not blocked.done() and link.edge.queued == 2  # "c" took the freed slot
        assert await link.edge.recv() == b"b"
        await blocked
        assert [await link.edge.recv() for _ in range(2)] == [b"c", b"d"]

    run(main())


def test_concurrent_sends_do_not_interleave() -> None:
    async def main() -> None:
        link = channel_pair(queue_size=1)
        first = asyncio.ensure_future(link.cloud.send([b"1a", b"1b", b"1c"]))
        await settle()
        second = asyncio.ensure_future(link.cloud.send([b"2a"]))
        got = [await link.edge.recv() for _ in range(4)]
        await asyncio.gather(first, second)
        assert got == [b"1a", b"1b", b"1c", b"2a"]

    run(main())


@pytest.mark.parametrize(
    ("code", "error"), [(1000, PeerClosed), (1001, PeerClosed), (1011, LinkBroken)]
)
def test_a_close_delivers_what_was_sent_then_tells_the_peer(
    code: int, error: type[Exception]
) -> None:
    async def main() -> None:
        link = channel_pair()
        await link.cloud.send([b"last words"])
        await link.cloud.close(code, "maintenance")
        assert link.edge.peer_closed == CloseInfo(code, "maintenance")
        assert await link.edge.recv() == b"last words"
        with pytest.raises(error, match=f"code {code}, maintenance") as caught:
            await link.edge.recv()
        assert type(caught.value) is error
        with pytest.raises(error):
            await link.edge.send([b"too late"])

    run(main())


def test_after_its_own_close_an_end_raises_link_closed_and_close_is_idempotent() -> None:
    async def main() -> None:
        link = channel_pair()
        await link.cloud.send([b"unread"])
        await link.edge.close(1000, "bye")
        await link.edge.close(1011, "again")
        assert link.edge.closed == CloseInfo(1000, "bye")
        assert link.cloud.peer_closed == CloseInfo(1000, "bye")
        with pytest.raises(LinkClosed):
            await link.edge.recv()  # what was queued for it is dropped with the close
        with pytest.raises(LinkClosed):
            await link.edge.send([b"x"])
        with pytest.raises(PeerClosed, match="code 1000, bye"):
            await link.cloud.send([b"x"])

    run(main())


def test_a_close_wakes_a_blocked_receiver_and_a_blocked_sender() -> None:
    async def main() -> None:
        link = channel_pair(queue_size=1)
        receiver = asyncio.ensure_future(link.edge.recv())
        await link.edge.send([b"fills the queue"])
        sender = asyncio.ensure_future(link.edge.send([b"waits"]))
        await settle()
        assert not receiver.done() and not sender.done()
        await link.cloud.close(1000, "")
        with pytest.raises(PeerClosed):
            await receiver
        with pytest.raises(PeerClosed, match=r"code 1000$"):
            await sender

    run(main())


def test_a_broken_link_fails_both_ends_at_once() -> None:
    async def main() -> None:
        link = channel_pair()
        await link.cloud.send([b"lost in transit"])
        receiver = asyncio.ensure_future(link.cloud.recv())
        await settle()
        link.break_link("cable pulled")
        for end in (link.cloud, link.edge):
            with pytest.raises(LinkBroken, match="cable pulled"):
                await end.recv()
            with pytest.raises(LinkBroken, match="cable pulled"):
                await end.send([b"x"])
        with pytest.raises(LinkBroken):
            await receiver
        assert link.edge.peer_closed is None  # broken, not closed

    run(main())


def test_a_black_hole_swallows_frames_and_keeps_both_ends_open() -> None:
    async def main() -> None:
        link = channel_pair(queue_size=1)
        await link.cloud.send([b"queued before"])
        link.black_hole()
        await link.cloud.send([b"1", b"2", b"3"])  # a full queue would have blocked
        await link.edge.send([b"4"])
        receivers = [asyncio.ensure_future(end.recv()) for end in (link.cloud, link.edge)]
        await settle()
        assert not any(r.done() for r in receivers)
        assert link.cloud.closed is None and link.edge.closed is None
        for receiver in receivers:
            receiver.cancel()

    run(main())


def test_queue_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="queue_size must be at least 1"):
        channel_pair(queue_size=0)


def test_an_end_is_a_channel() -> None:
    from shared.transport import Channel

    def takes(channel: Channel) -> str:
        return channel.peer

    end: MemoryChannel = channel_pair().edge
    assert takes(end) == "memory:cloud"
