"""Fixtures for integration tests (real sockets, TLS, SQLite, PostgreSQL; no mocks).

pytest-asyncio is not a dependency, so this file runs `async def` tests itself: each
test gets a fresh event loop (the `event_loop` fixture), fixtures such as `cloud`
start their components on that loop, and `pytest_pyfunc_call` runs the test
coroutine on it with an overall timeout.

`cloud` is an in-process `cloudcore.app.CloudCore` on 127.0.0.1 with ephemeral ports and
its data dir under tmp_path. Override settings per test with
`@pytest.mark.cloud_config(hub={"max_frame_bytes": 4096})`.

`pg_database` is a fresh PostgreSQL database per test module (and xdist worker) at
EDGESYNC_TEST_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres),
dropped afterwards. An unreachable server skips the PostgreSQL tests, except with the
`CI` environment variable set: then they fail, naming the URL, so CI cannot go green
without them.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa

from tests.integration.harness import Cloud, start_cloud

TEST_TIMEOUT = 90.0
"""Seconds an async test may run (below pytest-timeout's 120 s, for a readable failure)."""

PG_URL = os.environ.get(
    "EDGESYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def in_ci() -> bool:
    """True when the `CI` environment variable is set (and not 0/false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def postgres_unavailable(url: str, reason: str) -> NoReturn:
    """Skip the test, or fail it under CI, because PostgreSQL cannot be used."""
    message = f"PostgreSQL at {url} is unreachable: {reason}"
    if in_ci():
        pytest.fail(
            f"{message}. CI is set, so the PostgreSQL tests must run: start the server "
            "(.ci/run starts an installed one) or point EDGESYNC_TEST_PG_URL at one",
            pytrace=False,
        )
    pytest.skip(f"{message} (with CI set this fails)")


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this module; its SQLAlchemy URL."""
    import psycopg

    url = sa.engine.make_url(PG_URL)
    shown = url.render_as_string(hide_password=True)
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        postgres_unavailable(shown, str(exc).strip().splitlines()[0] if str(exc) else repr(exc))
    name = f"edgesync_test_{uuid.uuid4().hex[:16]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_pg_schema(url: str) -> None:
    """Drop every table (and Alembic's version table) so a test starts from nothing."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


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
