"""Fixtures for integration tests (real sockets, TLS, SQLite, PostgreSQL; no mocks).

pytest-asyncio is not a dependency, so this file runs `async def` tests itself: each
test gets a fresh event loop (the `event_loop` fixture), fixtures such as `cloud`
start their components on that loop, and `pytest_pyfunc_call` runs the test
coroutine on it with an overall timeout.

`cloud` is an in-process `cloudcore.app.CloudCore` on 127.0.0.1 with ephemeral ports and
its data dir under tmp_path. Override settings per test with
`@pytest.mark.cloud_config(hub={"max_frame_bytes": 4096})`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.harness import Cloud, start_cloud

TEST_TIMEOUT = 90.0
"""Seconds an async test may run (below pytest-timeout's 120 s, for a readable failure)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cloud_config(**settings): cloudcore settings for the `cloud` fixture"
    )


@pytest.fixture
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests on the test's event loop (a fresh one if it has none)."""
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    loop = pyfuncitem.funcargs.get("event_loop")

    async def bounded() -> Any:
        return await asyncio.wait_for(func(**kwargs), TEST_TIMEOUT)

    if isinstance(loop, asyncio.AbstractEventLoop):
        loop.run_until_complete(bounded())
    else:
        asyncio.run(bounded())
    return True


@pytest.fixture
def cloud(
    request: pytest.FixtureRequest, tmp_path: Any, event_loop: asyncio.AbstractEventLoop
) -> Iterator[Cloud]:
    """A running cloudcore; stopped (request_stop) after the test."""
    marker = request.node.get_closest_marker("cloud_config")
    overrides = dict(marker.kwargs) if marker else {}
    running = event_loop.run_until_complete(start_cloud(tmp_path / "cloud", **overrides))
    try:
        yield running
    finally:
        event_loop.run_until_complete(running.stop())
