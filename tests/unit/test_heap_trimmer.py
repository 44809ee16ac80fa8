"""HeapTrimmer (cloudcore/hub/tls.py): one trim after a burst, at most every min_interval."""

from __future__ import annotations

import asyncio
import sys

import pytest

from cloudcore.hub.tls import HeapTrimmer, return_freed_heap


async def _drive() -> list[float]:
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    def trim() -> bool:
        calls.append(loop.time())
        return True

    trimmer = HeapTrimmer(threshold=3, min_interval=0.3, delay=0.01, trim=trim)
    trimmer.note_release()
    trimmer.note_release()
    await asyncio.sleep(0.05)
    assert calls == []  # below the threshold: nothing
    started = loop.time()
    trimmer.note_release()
    for _ in range(10):  # more of the same burst: still one trim
        trimmer.note_release()
    await asyncio.sleep(0.1)
    assert len(calls) == 1 and trimmer.trims == 1
    for _ in range(3):  # the next burst, too soon: waits for min_interval
        trimmer.note_release()
    await asyncio.sleep(0.1)
    assert len(calls) == 1
    await asyncio.sleep(0.4)
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.3 - 0.01
    assert calls[0] - started >= 0.01
    trimmer.stop()
    return calls


def test_one_trim_per_burst_and_at_most_every_min_interval() -> None:
    asyncio.run(_drive())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_return_freed_heap_calls_malloc_trim_on_glibc() -> None:
    assert return_freed_heap() is True
