"""cloudcore: wires the store, PKI, hub, scheduler and API, and stops them in order."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import ssl

import yaml
from aiohttp import web

from cloudcore.api import Api
from cloudcore.api.listener import ApiListener
from cloudcore.config import CloudConfig
from cloudcore.hub.quic import QuicHubServer
from cloudcore.hub.refusals import RefusalLog
from cloudcore.hub.tls import server_context
from cloudcore.hub.websocket import WebSocketServer
from cloudcore.pki import CloudPKI
from cloudcore.scheduler import Scheduler
from cloudcore.store import CloudStore
from cloudcore.sync import Hub
from shared.aio.dbthread import DbThread
from shared.clock import Clock, SystemClock
from shared.files import write_private

log = logging.getLogger("cloudcore")

ENVELOPE_ALLOWANCE = 1024
"""Bytes of a desired-state frame that are not the task document (envelope, epoch, …)."""
API_KEEPALIVE = 15.0
"""Seconds an idle HTTPS connection to the API is kept (aiohttp's default is 75)."""


class CloudCore:
    def __init__(self, config: CloudConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.data_dir = config.data_path
        self.pki = CloudPKI(self.data_dir, list(config.pki.hosts))
        self.store = CloudStore(config.db_url, config.sqlite_synchronous)
        self.db = DbThread()
        self.hub = Hub(
            self.store, self.db, self.clock, config.hub.session_config(), config.result_history
        )
        self.refusals = RefusalLog(self.hub.stats.connections_refused)
        """Edge connections refused before a session: counted in hub.stats, logged in a budget."""
        self.scheduler = Scheduler(
            self.store,
            self.db,
            self.clock,
            self.hub.notify,
            node_label_keys=config.node_label_keys,
        )
        self.hub.on_labels_changed = lambda node: self.scheduler.request(nodes={node})
        self.websocket_port = 0
        self.websocket_server: WebSocketServer | None = None
        self.quic_port: int | None = None
        self.api_port = 0
        self.api_app: web.Application | None = None
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Start everything, serve until SIGTERM/SIGINT, then shut down in order."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = dt.datetime.fromtimestamp(self.clock.time_ms() / 1000, dt.timezone.utc)
        self.pki.ensure(now)
        await self.db.run(self.store.create_schema)
        self.hub.start()
        ws_ssl = server_context(
            self.pki.server_cert_path, self.pki.server_key_path, self.pki.ca_cert_path
        )
        refusals = self.refusals
        ws = WebSocketServer(
            self.hub.serve,
            ws_ssl,
            self.config.hub.max_frame_bytes,
            self.config.hub.handshake_timeout,
            self.config.hub.compression,
            ca=self.pki.ca_cert,
            refusals=refusals,
            max_pending=self.config.hub.max_pending_handshakes,
        )
        self.websocket_server = ws
        self.websocket_port = await ws.start(self.config.hub.listen, self.config.hub.websocket_port)
        quic: QuicHubServer | None = None
        if self.config.hub.quic_port >= 0:
            quic = QuicHubServer(
                self.hub.serve,
                self.pki.server_cert_path,
                self.pki.server_key_path,
                self.pki.ca_cert_path,
                self.config.hub.max_frame_bytes,
                self.config.hub.quic_idle_timeout,
                refusals=refusals,
            )
            self.quic_port = await quic.start(self.config.hub.listen, self.config.hub.quic_port)
        api = Api(
            store=self.store,
            db=self.db,
            pki_files=self.pki,
            scheduler=self.scheduler,
            hub=self.hub,
            clock=self.clock,
            node_cert_days=self.config.pki.node_cert_days,
            default_token_ttl=self.config.pki.default_token_ttl,
            websocket_port=lambda: self.websocket_port,
            quic_port=lambda: self.quic_port,
            insecure_no_auth=self.config.api.insecure_no_auth,
            refusals=self.refusals,
            max_document_bytes=self.config.hub.max_frame_bytes
            - min(ENVELOPE_ALLOWANCE, self.config.hub.max_frame_bytes // 4),
        )
        self.api_app = api.app()
        runner = web.AppRunner(
            self.api_app,
            access_log=None,
            handle_signals=False,
            # A compressed body is refused (415, cloudcore/api/body.py), never inflated:
            # 1 MiB of gzip is 1 GiB of zeros, inflated on the event loop.
            auto_decompress=False,
            keepalive_timeout=API_KEEPALIVE,
            lingering_time=0,
        )
        await runner.setup()
        api_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        api_ssl.load_cert_chain(self.pki.server_cert_path, self.pki.server_key_path)
        assert runner.server is not None
        listener = ApiListener(
            runner.server,
            api_ssl,
            self.refusals,
            self.config.hub.handshake_timeout,
            self.config.hub.max_pending_handshakes,
        )
        self.api_port = await listener.start(self.config.api.listen, self.config.api.port)
        if self.config.api.insecure_no_auth:
            log.warning("operator API runs WITHOUT authentication (api.insecure_no_auth)")
        self.scheduler.start()
        await self.scheduler.ready()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # Written last: tools (LocalFleet, tests) take it to mean "up", and from here a
        # SIGTERM stops cloudcore in order.
        self._write_runtime_files()
        log.info(
            "cloudcore ready: wss://%s:%d/edgesync/v1, quic %s, https://%s:%d (data in %s)",
            self.config.hub.listen,
            self.websocket_port,
            f"udp {self.quic_port}" if self.quic_port is not None else "off",
            self.config.api.listen,
            self.api_port,
            self.data_dir,
        )
        _notify_systemd("READY=1")
        try:
            await self._stop.wait()
        finally:
            log.info("cloudcore shutting down")
            _notify_systemd("STOPPING=1")
            await ws.stop()  # no new WebSocket sessions; QUIC ones end with the server
            await self.scheduler.stop()
            await self.hub.close_all("cloudcore is shutting down")
            await self.hub.stop()
            if quic is not None:
                await quic.stop()
            await listener.stop()
            await runner.cleanup()
            api.bodies.close()
            refusals.close()
            self.db.shutdown()
            self.store.close()

    def _write_runtime_files(self) -> None:
        host = self.config.pki.hosts[0] if self.config.pki.hosts else "127.0.0.1"
        server = f"https://{host}:{self.api_port}"
        edgectl = {
            "server": server,
            "token": self.pki.admin_token(),
            "ca": self.pki.ca_pem.decode(),
        }
        write_private(
            self.data_dir / "edgectl.yaml", yaml.safe_dump(edgectl, sort_keys=False).encode()
        )
        state = {
            "pid": os.getpid(),
            "websocket_port": self.websocket_port,
            "quic_port": self.quic_port,
            "api_port": self.api_port,
            "api": server,
        }
        (self.data_dir / "cloudcore.json").write_text(json.dumps(state) + "\n")


def _notify_systemd(state: str) -> None:
    """sd_notify without a dependency: one datagram to $NOTIFY_SOCKET, if set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    import socket

    addr = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(addr)
            sock.sendall(state.encode())
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
