"""edgecore: wires the store, link and local scheduler, and stops them in order."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from edgecore import sysinfo
from edgecore.config import EdgeConfig
from edgecore.link.client import Link
from edgecore.link.websocket import client_context
from edgecore.runtime import RuntimeRegistry
from edgecore.runtime.command_runtime import CommandRuntime
from edgecore.scheduler import LocalScheduler
from edgecore.store import EdgeStore
from shared import pki
from shared.admission import Capacity
from shared.aio.dbthread import DbThread
from shared.clock import Clock, SystemClock
from shared.errors import ConfigError, PKIError

log = logging.getLogger("edgecore")

RUN_HISTORY = 50


class EdgeCore:
    def __init__(self, config: EdgeConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.data_dir = config.data_path
        self._stop = asyncio.Event()

    def _check_joined(self) -> str:
        cert = self.data_dir / "node.crt"
        if not cert.exists():
            raise PKIError(
                f"{cert} not found: this node has not joined a cloud yet; run "
                "`edgecore join --cloud https://HOST:10002 --token TOKEN "
                f"--data-dir {self.data_dir}`"
            )
        if not self.config.cloud.websocket_url:
            raise ConfigError("cloud.websocket_url is empty; run `edgecore join` first")
        if self.config.link.transport not in ("websocket", "quic", "auto"):
            raise ConfigError(
                f"link.transport must be websocket, quic or auto, not "
                f"{self.config.link.transport!r}"
            )
        if self.config.link.transport == "quic" and not self.config.cloud.quic_url:
            raise ConfigError("link.transport is quic but cloud.quic_url is empty")
        return pki.node_name_from_cert(pki.load_cert_pem(cert.read_bytes()))

    async def run(self) -> None:
        node = self._check_joined()
        ssl_ctx = client_context(
            self.data_dir / "node.crt", self.data_dir / "node.key", self.data_dir / "ca.crt"
        )
        store = EdgeStore(self.data_dir / "edge.db", self.config.outbox_max_rows)
        db = DbThread()
        await db.run(store.open)
        scheduler: LocalScheduler | None = None

        def heartbeat() -> dict[str, Any]:
            metrics = sysinfo.load()
            metrics["running"] = scheduler.running_count if scheduler else 0
            return metrics

        link = Link(
            self.config,
            store,
            db,
            self.clock,
            ssl_ctx,
            on_desired=lambda res: scheduler.desired_changed(res) if scheduler else None,
            heartbeat=heartbeat,
        )
        scheduler = LocalScheduler(
            self.config.runtime,
            store,
            db,
            self.clock,
            self.data_dir,
            node,
            on_outbox=link.outbox_changed,
            link_up=link.connected.is_set,
            runtimes=RuntimeRegistry([CommandRuntime(self.config.runtime)]),
            capacity=Capacity.from_report(sysinfo.capacity()),
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("edgecore %s starting; cloud %s", node, self.config.cloud.websocket_url)
        tasks = {
            "link": asyncio.ensure_future(link.run()),
            "scheduler": asyncio.ensure_future(scheduler.run()),
            "prune": asyncio.ensure_future(self._prune(store, db)),
        }
        for name, started in tasks.items():
            started.set_name(name)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                [stop, *tasks.values()], return_when=asyncio.FIRST_COMPLETED
            )
            crashed = [t for t in done if t is not stop and not t.cancelled() and t.exception()]
            log.info("edgecore stopping")
            # Scheduler first: it records the runs it interrupts; then the link goes.
            tasks["scheduler"].cancel()
            await asyncio.gather(tasks["scheduler"], return_exceptions=True)
            await link.stop()
            stop.cancel()
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), stop, return_exceptions=True)
            if crashed:
                exc = crashed[0].exception()
                assert exc is not None
                raise exc
        finally:
            db.shutdown()
            store.close()

    def request_stop(self) -> None:
        self._stop.set()

    async def _prune(self, store: EdgeStore, db: DbThread) -> None:
        while True:
            await db.run(store.prune_runs, RUN_HISTORY)
            await asyncio.sleep(300)
