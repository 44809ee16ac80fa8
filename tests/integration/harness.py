"""Real components for integration tests: an in-process cloudcore, joins, hand-driven edges.

Nothing here is a mock: the cloud is `cloudcore.app.CloudCore` listening on loopback
(ephemeral ports), joins go through its HTTPS API, and `RawEdge` is a real mutual-TLS
WebSocket connection driven by the real sans-I/O edge `Session`, so a test can send
valid frames or hand-crafted bad ones and see exactly what the cloud answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from cloudcore.app import CloudCore
from cloudcore.config import CloudConfig, HubConfig
from cloudcore.store import CloudStore
from cloudcore.sync import Hub
from edgecore.join import join as edge_join
from shared.config import from_dict
from shared.errors import RemoteProtocolError
from shared.protocol import codec
from shared.protocol.events import (
    Event,
    MessageReceived,
    SessionClosed,
    WelcomeReceived,
)
from shared.protocol.messages import Envelope, Op
from shared.protocol.session import Session, SessionConfig
from shared.protocol.states import Role

T = TypeVar("T")

WS_PATH = "/edgesync/v1"
WAIT = 10.0
"""Default seconds to wait for a condition before failing."""

EDGE_SESSION = SessionConfig(ping_interval=1.0, missed_pings=3, handshake_timeout=3.0)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def eventually(
    check: Callable[[], Any], timeout: float = WAIT, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout:g}s: {what or check}")
        await asyncio.sleep(interval)


def task_document(name: str, nodes: list[str], argv: list[str] | None = None) -> dict[str, Any]:
    """A valid task pinned to `nodes`."""
    return {
        "apiVersion": "edgesync.io/v1",
        "kind": "Task",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "kind": "command",
            "command": {"argv": argv or ["true"], "timeout": 5},
            "trigger": {"type": "once"},
            "placement": {"nodes": nodes},
        },
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class EdgeIdentity:
    """What `edgecore join` left in an edge's data dir."""

    node: str
    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / "node.crt"

    @property
    def key(self) -> Path:
        return self.dir / "node.key"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"


def client_tls(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context trusting `ca`, presenting `cert`/`key` if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def connected_socket(port: int) -> socket.socket:
    """A TCP socket connected to 127.0.0.1:port; its local address is the peer the cloud logs."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


async def tls_ready_socket(port: int) -> socket.socket:
    """A TCP connection to the hub, ready for a ClientHello at once.

    The hub once lost a ClientHello that arrived before its `start_tls` call, and
    this helper waited for that call (2 s per connection when it never came). The
    hub now pauses reading at accept and waits, without reading, until the
    ClientHello is there (cloudcore/hub/websocket.py), so a plain connect is right;
    test_hub_security.py::test_client_sending_client_hello_immediately_is_served
    keeps that true.
    """
    return await connected_socket(port)


def peer_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@dataclass
class Cloud:
    """A running in-process cloudcore and handles to its parts."""

    app: CloudCore
    task: asyncio.Task[None]
    data_dir: Path
    http: aiohttp.ClientSession
    edges: list[RawEdge] = field(default_factory=list)

    @property
    def ws_port(self) -> int:
        return self.app.websocket_port

    @property
    def api_port(self) -> int:
        return self.app.api_port

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.ws_port}{WS_PATH}"

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def ca_path(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def store(self) -> CloudStore:
        return self.app.store

    @property
    def hub(self) -> Hub:
        return self.app.hub

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the cloud's own DB thread."""
        return await self.app.db.run(fn, *args, **kwargs)

    # ------------------------------------------------------------ HTTPS API

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: str | bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: str | None = "admin",
    ) -> tuple[int, Any]:
        """One HTTPS request; returns (status, parsed JSON or text). auth=None sends no token."""
        hdrs = dict(headers or {})
        if auth == "admin":
            hdrs["Authorization"] = f"Bearer {self.admin_token}"
        elif auth is not None:
            hdrs["Authorization"] = auth
        async with self.http.request(
            method, self.api_url + path, json=json_body, data=data, headers=hdrs
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def create_token(
        self, node: str, ttl: float | None = None, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A join token; `labels` are the operator's placement labels for the node."""
        body: dict[str, Any] = {"node": node}
        if ttl is not None:
            body["ttl"] = ttl
        if labels is not None:
            body["labels"] = labels
        status, answer = await self.request("POST", "/api/v1/tokens", json_body=body)
        assert status == 201, answer
        return dict(answer)

    async def join(
        self,
        node: str,
        edge_dir: Path,
        labels: dict[str, str] | None = None,
        operator_labels: dict[str, str] | None = None,
    ) -> EdgeIdentity:
        """Join `node` with the real `edgecore join` code (in a thread: it uses urllib).

        `labels` are what the edge reports about itself; `operator_labels` go with the token.
        """
        token = (await self.create_token(node, labels=operator_labels))["token"]
        return await self.join_with_token(node, token, edge_dir, labels)

    async def join_with_token(
        self, node: str, token: str, edge_dir: Path, labels: dict[str, str] | None = None
    ) -> EdgeIdentity:
        name = await asyncio.to_thread(edge_join, self.api_url, token, edge_dir, labels or {})
        assert name == node
        return EdgeIdentity(node, edge_dir)

    async def apply_task(self, doc: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self.request("POST", "/api/v1/tasks", json_body=doc)
        assert status == 200, answer
        return dict(answer)

    # ------------------------------------------------------------ edge connections

    async def open_ws(
        self,
        ca: Path,
        cert: Path | None,
        key: Path | None,
        sock: socket.socket | None = None,
        **kwargs: Any,
    ) -> ClientConnection:
        """A raw WebSocket connection to the hub with the given client certificate."""
        sock = sock or await tls_ready_socket(self.ws_port)
        return await connect(
            self.ws_url,
            ssl=client_tls(ca, cert, key),
            sock=sock,
            server_hostname="127.0.0.1",
            ping_interval=None,
            open_timeout=WAIT,
            close_timeout=2,
            **kwargs,
        )

    async def edge(self, ident: EdgeIdentity, *, hello: bool = True, **hello_kw: Any) -> RawEdge:
        """Connect `ident` and (by default) complete the protocol handshake."""
        ws = await self.open_ws(ident.ca, ident.cert, ident.key)
        edge = RawEdge(ws, ident.node)
        self.edges.append(edge)
        edge.start()
        if hello:
            await edge.hello(**hello_kw)
        return edge

    async def stop(self) -> None:
        for edge in self.edges:
            await edge.close()
        self.app.request_stop()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 20)
        finally:
            await self.http.close()


async def start_cloud(data_dir: Path, **overrides: Any) -> Cloud:
    """Start CloudCore on loopback with ephemeral ports; wait for its cloudcore.json.

    `overrides` are config settings; `hub`/`api`/`pki` mappings merge into the defaults here.
    """
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "hub": {
            "listen": "127.0.0.1",
            "websocket_port": 0,
            "ping_interval": 1.0,
            "handshake_timeout": 3.0,
        },
        "api": {"listen": "127.0.0.1", "port": 0},
    }
    if "quic_port" in {f.name for f in dataclasses.fields(HubConfig)}:
        raw["hub"]["quic_port"] = 0  # a fixed UDP port would collide between parallel tests
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    config = from_dict(CloudConfig, raw, "<integration test>")
    app = CloudCore(config)
    task = asyncio.create_task(app.run(), name="cloudcore")
    runtime = data_dir / "cloudcore.json"

    def ready() -> bool:
        if task.done():
            return True
        try:
            state = json.loads(runtime.read_text())
        except (OSError, ValueError):
            return False
        return bool(state.get("websocket_port"))

    await eventually(ready, timeout=30, what="cloudcore.json written")
    if task.done():
        task.result()  # raises what stopped it
        raise AssertionError("cloudcore exited during startup")
    state = json.loads(runtime.read_text())
    assert state["websocket_port"] == app.websocket_port != 0
    assert state["api_port"] == app.api_port != 0
    ctx = ssl.create_default_context(cafile=str(data_dir / "pki" / "ca.crt"))
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
    return Cloud(app=app, task=task, data_dir=data_dir, http=http)


class RawEdge:
    """A hand-driven edge: real mTLS WebSocket, real edge `Session`, every frame recorded.

    A background pump feeds received frames to the session, answers pings, acks applied
    desired state (so the cloud's window keeps moving) and records every decoded frame
    and session event. Tests send protocol-valid messages through `session` + `flush()`
    or arbitrary bytes with `send_raw()`.
    """

    def __init__(self, ws: ClientConnection, node: str) -> None:
        self.ws = ws
        self.node = node
        self.session = Session(Role.EDGE, EDGE_SESSION, time.monotonic(), now_ms())
        self.frames: list[Envelope] = []
        self.events: list[Event] = []
        self.closed = asyncio.Event()
        self._cond = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        host, port = ws.local_address[:2]
        self.peer = f"{host}:{port}"
        """This connection's address as the cloud sees (and logs) it."""

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    @property
    def close_reason(self) -> str | None:
        return self.ws.close_reason

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name=f"raw-edge:{self.node}")

    async def flush(self) -> None:
        for frame in self.session.data_to_send():
            await self.ws.send(frame, text=True)

    async def send_raw(self, data: bytes | str) -> None:
        """Send one frame exactly as given (str as a text frame, bytes as binary)."""
        await self.ws.send(data)

    async def hello(
        self,
        applied_rv: int = 0,
        store_id: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> WelcomeReceived:
        self.session.send_hello(
            applied_rv,
            {
                "software": "raw-edge/test",
                "store_id": store_id or uuid.uuid4().hex,
                "labels": labels or {},
                "capacity": {"cpus": 1},
            },
            time.monotonic(),
        )
        await self.flush()
        welcome: WelcomeReceived = await self.wait_event(WelcomeReceived)
        return welcome

    async def _pump(self) -> None:
        session = self.session
        try:
            while True:
                deadline = session.next_deadline()
                timeout = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    data = await asyncio.wait_for(self.ws.recv(), timeout)
                except (TimeoutError, asyncio.TimeoutError):
                    data = None
                now = time.monotonic()
                if data is not None:
                    raw = data.encode() if isinstance(data, str) else data
                    try:
                        self.frames.append(codec.decode(raw, EDGE_SESSION.limits))
                    except RemoteProtocolError:
                        pass  # the session below reports it
                    session.receive_frame(raw, now)
                session.handle_timer(now)
                new = session.events_received()
                top = max(
                    (e.cursor for e in new if isinstance(e, MessageReceived)),
                    default=None,
                )
                if top is not None:
                    session.ack(top, now)
                await self.flush()
                async with self._cond:
                    self.events.extend(new)
                    self._cond.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            async with self._cond:
                self._cond.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(predicate), timeout)

    async def wait_event(
        self, kind: type[Any], match: Callable[[Any], bool] = lambda _: True, timeout: float = WAIT
    ) -> Any:
        def find() -> Any:
            return next((e for e in self.events if isinstance(e, kind) and match(e)), None)

        try:
            await self.wait_until(lambda: find() is not None, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise AssertionError(
                f"{self.node}: no {kind.__name__} matching within {timeout:g}s; "
                f"events: {self.events!r}"
            ) from None
        return find()

    async def wait_frame(
        self, match: Callable[[Envelope], bool], timeout: float = WAIT
    ) -> Envelope:
        def find() -> Envelope | None:
            return next((f for f in self.frames if match(f)), None)

        try:
            await self.wait_until(lambda: find() is not None, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise AssertionError(
                f"{self.node}: no matching frame within {timeout:g}s; frames: {self.frames!r}"
            ) from None
        found = find()
        assert found is not None
        return found

    async def wait_closed(self, timeout: float = WAIT) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def ping(self, timeout: float = WAIT) -> Envelope:
        """Send a protocol ping by hand and wait for the cloud's pong to it."""
        ping_id = uuid.uuid4().hex
        await self.send_raw(codec.encode(Envelope(op=Op.PING, id=ping_id, ts=now_ms())).decode())
        return await self.wait_frame(lambda f: f.op is Op.PONG and f.parent == ping_id, timeout)

    def fatal_error(self) -> SessionClosed | None:
        """The cloud's fatal `error` (as the session's SessionClosed by_peer), if any."""
        return next((e for e in self.events if isinstance(e, SessionClosed) and e.by_peer), None)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await asyncio.wait_for(self.ws.close(), 3)
        except (TimeoutError, asyncio.TimeoutError, OSError):
            pass


async def assert_node_works(cloud: Cloud, edge: RawEdge) -> None:
    """`edge` still answers pings and receives a task applied to its node now."""
    assert not edge.closed.is_set(), f"{edge.node}'s connection was closed: {edge.close_reason}"
    await edge.ping()
    name = unique("probe")
    await cloud.apply_task(task_document(name, [edge.node]))
    res = f"task/default/{name}"
    frame = await edge.wait_frame(lambda f: f.op is Op.APPLY and f.res == res)
    assert frame.body is not None and frame.body["document"]["metadata"]["name"] == name
    assert cloud.hub.sessions.get(edge.node) is not None


def warnings_naming(caplog: Any, *needles: str) -> list[str]:
    """Messages of WARNING+ records that contain every one of `needles`."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= 30 and all(n in r.getMessage() for n in needles)
    ]
