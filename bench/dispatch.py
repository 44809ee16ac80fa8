#!/usr/bin/env python
"""Cloud→edge dispatch over WebSocket and QUIC: a real cloudcore against a bare websockets
baseline, same run; plus handshake and reconnect-to-resumed times, and the same under
datagram loss. bench/README.md documents every figure; this is the outline.

Per (N nodes, sqlite_synchronous): one cloudcore, the nodes join once, then each
transport of --transports in turn (websocket: edgecore.link.websocket.connect_websocket;
quic: edgecore.link.quic.connect_quic), then the baseline. Per transport: a handshake
sample (first connects one at a time), the phases below, and a reconnect sample (break
the link abruptly, apply a task pinned to that node, reconnect resuming from the cursor).
Then, under --loss (default 5 %): QUIC through tests/helpers/udp_proxy.UdpProxy, and
both transports in a network namespace dropping that share of the hub ports' packets.

Per case (N nodes):

edgesync
    A real `cloudcore` child process (SQLite, `sqlite_synchronous` as given,
    default NORMAL here; cloudcore's own default is FULL). N nodes join
    through the real join API (token + CSR, in parallel). A second child
    process holds N real connections (wss or QUIC) with mutual TLS, each driven
    by the real sans-I/O `Session(Role.EDGE)`: hello, welcome, then a cumulative ack
    after every batch of received frames (no edge database: this measures the
    cloud's dispatch path). Load goes through the real REST API: K
    selector-based tasks match every node, and every `POST /api/v1/tasks`
    that changes one of them writes N desired rows in one transaction.
    - max phase: K concurrent appliers re-apply their task (generation bump)
      as fast as the API answers, for `--duration` seconds or until
      `--messages-per-node` applies are done. The desired log is compacted
      (one row per node and task), so a generation that is superseded before
      it was dispatched is never sent: reported as `superseded`.
    - paced phase: one applier at half the measured max msgs/s.
    Latency per message: t0 = the apply call that created that generation
    returned (its desired rows are committed), t1 = the edge acked it
    (time.monotonic(), which is one system-wide clock on Linux).
    Throughput: acked messages / (last ack - first apply request).

baseline
    A bare `websockets.asyncio.server.serve` (same TLS certs, client
    certificates required, compression off) pushes the same number of
    same-size JSON messages per client, with the same 256-message window,
    to N bare websockets clients in another process; each client answers
    every batch of received messages with one small JSON ack.
    - max phase: t0 = the message was handed to `send()`.
    - paced phase: the same rounds/s as edgesync's paced phase; t0 = the
      round was released.

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import websockets.version
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cloudcore.fleet import Daemon  # noqa: E402
from shared import pki  # noqa: E402
from shared.ids import new_ulid  # noqa: E402
from shared.resources import parse_task, to_document  # noqa: E402

WINDOW = 256  # cloudcore's hub.window default; the baseline server uses the same
MAX_FRAME_BYTES = 1 << 20  # cloudcore's and edgecore's max_frame_bytes default
MAX_FRAME = MAX_FRAME_BYTES + 65536  # websockets max_size (what connect_websocket sets)
QUIC_IDLE_TIMEOUT = 60.0  # the edge's ping_interval * (missed_pings + 1), as edgecore uses
NETNS_PORTS = {"websocket_port": 10000, "quic_port": 10001, "api_port": 10002}
TRANSPORTS = ("websocket", "quic")
SCRIPT = str(Path(__file__).resolve())
RES_PREFIX = "task/default/"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ---------------------------------------------------------------- task documents


def task_document(k: int, stamp: int, selector: dict[str, str]) -> dict[str, Any]:
    """Task bench-k; `stamp` changes the spec, so each apply bumps the generation."""
    return {
        "apiVersion": "edgesync.io/v1",
        "kind": "Task",
        "metadata": {"name": f"bench-{k}", "namespace": "default"},
        "spec": {
            "kind": "command",
            "command": {"argv": ["true"], "timeout": 30, "env": {"STAMP": f"{stamp:010d}"}},
            "trigger": {"type": "once"},
            "placement": {"selector": selector},
        },
    }


def pinned_task_document(name: str, node: str, stamp: int) -> dict[str, Any]:
    """A task placed on one node only (the reconnect sample: no broadcast to the others)."""
    doc = task_document(0, stamp, {})
    doc["metadata"]["name"] = name
    doc["spec"]["placement"] = {"nodes": [node]}
    return doc


def canonical_document(k: int, stamp: int) -> dict[str, Any]:
    """What the cloud stores and sends for that document (used for the baseline's size)."""
    return to_document(parse_task(task_document(k, stamp, {})))


# ---------------------------------------------------------------- /proc CPU accounting


def _ticks(stat_path: str) -> int:
    with open(stat_path) as fh:
        data = fh.read()
    rest = data[data.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])  # utime + stime


def process_ticks(pid: int) -> dict[str, int]:
    """{'total': ticks, 'main': ticks of the main thread, 'other_threads': rest}."""
    try:
        total = _ticks(f"/proc/{pid}/stat")
        main = _ticks(f"/proc/{pid}/task/{pid}/stat")
    except (OSError, ValueError, IndexError):
        return {"total": 0, "main": 0, "other_threads": 0}
    return {"total": total, "main": main, "other_threads": total - main}


def machine_busy_ticks() -> int:
    """Busy CPU ticks of the whole machine, all cores (/proc/stat)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    except (OSError, ValueError):
        return -1
    return user + nice + system + irq + softirq + steal


class CpuMeter:
    """CPU share (% of one core) of some processes between start() and stop(), and of
    everything else on the machine (`other_processes`: anything not ours, e.g. a test
    suite running at the same time, which skews every figure of the phase)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = time.monotonic()
        self._start = {name: process_ticks(pid) for name, pid in pids.items()}
        self._machine0 = machine_busy_ticks()
        self.wall = 0.0

    def per_message_us(self, cpu: dict[str, Any], messages: int) -> dict[str, float | None]:
        """CPU time (all threads) per delivered message, µs, of each process."""
        return {
            name: round(v["total"] / 100.0 * self.wall / messages * 1e6, 1) if messages else None
            for name, v in cpu.items()
            if name not in ("driver", "other_processes")
        }

    def stop(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self._t0, 1e-6)
        self.wall = wall
        out: dict[str, Any] = {}
        ours = 0
        for name, pid in self.pids.items():
            end = process_ticks(pid)
            start = self._start[name]
            ours += end["total"] - start["total"]
            out[name] = {
                key: max(0.0, round(100.0 * (end[key] - start[key]) / CLK_TCK / wall, 1))
                for key in end
            }
        machine1 = machine_busy_ticks()
        if machine1 >= 0 and self._machine0 >= 0:
            other = machine1 - self._machine0 - ours
            out["other_processes"] = {"total": max(0.0, round(100.0 * other / CLK_TCK / wall, 1))}
        return out


# ---------------------------------------------------------------- kernel UDP drops


def udp_counters() -> dict[str, Any]:
    """This network namespace's UDP receive-buffer drops: the total (/proc/net/snmp
    RcvbufErrors) and per local port (the `drops` column of /proc/net/udp{,6})."""
    total = -1
    try:
        with open("/proc/net/snmp") as fh:
            rows = [line.split() for line in fh if line.startswith("Udp:")]
        if len(rows) >= 2:
            total = int(dict(zip(rows[0][1:], rows[1][1:], strict=False))["RcvbufErrors"])
    except (OSError, KeyError, ValueError):
        pass
    ports: dict[int, int] = {}
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            try:
                port = int(f[1].rsplit(":", 1)[1], 16)
                ports[port] = ports.get(port, 0) + int(f[-1])
            except (IndexError, ValueError):
                continue
    return {"total": total, "ports": ports}


def udp_drops_between(
    before: dict[str, Any], after: dict[str, Any], named: dict[str, int]
) -> dict[str, Any]:
    """Datagrams the kernel dropped for a full receive buffer between two snapshots:
    namespace-wide, and on the named sockets (by local port)."""
    out: dict[str, Any] = {
        "namespace_rcvbuf_errors": after["total"] - before["total"]
        if before["total"] >= 0 and after["total"] >= 0
        else None
    }
    for name, port in named.items():
        out[f"{name}_socket"] = after["ports"].get(port, 0) - before["ports"].get(port, 0)
    return out


# ---------------------------------------------------------------- pipe plumbing


def _pipe_reader(
    conn: Connection, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]
) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = ("stop",)
        loop.call_soon_threadsafe(queue.put_nowait, msg)
        if msg[0] == "stop":
            return


def _start_pipe_reader(conn: Connection) -> asyncio.Queue[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    thread = threading.Thread(
        target=_pipe_reader, args=(conn, asyncio.get_running_loop(), queue), daemon=True
    )
    thread.start()
    return queue


class Child:
    """A spawned helper process with a duplex pipe; always cleaned up by stop()."""

    def __init__(self, name: str, target: Callable[..., None], spec: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child_conn, spec), name=name, daemon=True)
        self.proc.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, *msg: Any) -> None:
        self.conn.send(msg)

    async def reply(self, timeout: float) -> Any:
        def wait() -> Any:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.conn.poll(0.2):
                    return self.conn.recv()
                if not self.proc.is_alive():
                    raise RuntimeError(f"{self.name} exited (code {self.proc.exitcode})")
            raise TimeoutError(f"{self.name}: no reply within {timeout:g}s")

        msg = await asyncio.get_running_loop().run_in_executor(None, wait)
        if msg[0] == "error":
            raise RuntimeError(f"{self.name} failed: {msg[1]}")
        return msg

    def stop(self) -> None:
        try:
            if self.proc.is_alive():
                try:
                    self.conn.send(("stop",))
                except (OSError, ValueError):
                    pass
                self.proc.join(15)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        finally:
            self.conn.close()


# ---------------------------------------------------------------- edge-side process


class SimConn:
    """One simulated edge connection; subclasses speak edgesync or the bare baseline."""

    def __init__(self, worker: EdgeWorker, idx: int, name: str, ctx: ssl.SSLContext) -> None:
        self.worker = worker
        self.idx = idx
        self.name = name
        self.ctx = ctx
        self.ws: Any = None
        self.latest: dict[str, int] = {}
        self.pending: list[tuple[str, int, float, int, float]] = []
        self.ack_wake = asyncio.Event()
        self.welcomed = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.closed: str | None = None

    async def open(self, url: str) -> None:
        from websockets.asyncio.client import connect

        self.closed = None
        self.welcomed.clear()
        self.pending = []
        self.ws = None
        self.ws = await connect(
            url,
            ssl=self.ctx,
            compression=None,
            ping_interval=None,
            max_size=MAX_FRAME,
            open_timeout=self.worker.spec.get("open_timeout", 3.0),
            close_timeout=2,
        )
        await self.hello()
        self.tasks = [
            asyncio.create_task(self.read_loop(), name=f"read:{self.name}"),
            asyncio.create_task(self.ack_loop(), name=f"ack:{self.name}"),
        ]
        try:
            await asyncio.wait_for(self.welcomed.wait(), 60)
        except BaseException:
            await self.close()
            raise
        if self.closed is not None:
            raise ConnectionError(self.closed)

    async def hello(self) -> None:
        raise NotImplementedError

    def on_frame(self, frame: bytes, now: float) -> None:
        raise NotImplementedError

    async def ack(self, top: int, now: float) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Timers (protocol pings); called every 2 s."""

    async def read_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self.ws
        while True:
            try:
                frame = await ws.recv(decode=False)
            except ConnectionClosed as exc:
                self.lost(f"connection closed: {exc}")
                return
            self.on_frame(frame, time.monotonic())
            if self.pending:
                self.ack_wake.set()

    async def ack_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed

        while True:
            await self.ack_wake.wait()
            self.ack_wake.clear()
            batch, self.pending = self.pending, []
            if not batch:
                continue
            now = time.monotonic()
            try:
                await self.ack(max(item[3] for item in batch), now)
            except ConnectionClosed as exc:
                self.lost(f"connection closed while acking: {exc}")
                return
            self.worker.acked(self, batch, now)

    def lost(self, why: str) -> None:
        if self.closed is None:
            self.closed = why
            self.worker.errors.append(f"{self.name}: {why}")
            self.welcomed.set()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except Exception:
                pass


class EdgesyncConn(SimConn):
    """Speaks the real protocol through shared.protocol.session.Session(Role.EDGE), over the
    real edge transports: edgecore.link.websocket.connect_websocket or
    edgecore.link.quic.connect_quic (the channels edgecore itself uses)."""

    def __init__(self, worker: EdgeWorker, idx: int, name: str, ctx: ssl.SSLContext | None) -> None:
        super().__init__(worker, idx, name, ctx)  # type: ignore[arg-type]
        self.link: Any = None
        self.acked_rv = 0  # the cursor: highest rv acked (what a resume announces)
        self.received_rv = 0
        self.breaking = False
        self.tickets: Any = worker.new_ticket_cache()
        self.t_connect = self.t_link = self.t_hello = self.t_welcome = 0.0
        self.resync: bool | None = None
        self.tls_resumed: bool | None = None
        self.first_msg: tuple[float, str, int, int] | None = None
        self.want: tuple[str, int] | None = None
        self.t_want = 0.0
        self.got_want = asyncio.Event()

    async def open(self, url: str) -> None:
        from edgecore.link.quic import connect_quic
        from edgecore.link.websocket import connect_websocket

        self.closed = None
        self.breaking = False
        self.welcomed.clear()
        self.pending = []
        self.link = None
        self.first_msg = None
        self.resync = None
        timeout = self.worker.spec.get("open_timeout", 3.0)
        self.t_connect = time.monotonic()
        if self.worker.transport == "quic":
            certs = self.worker.cert_dir
            extra = {"tickets": self.tickets} if self.tickets is not None else {}
            self.link = await connect_quic(
                url,
                certs / f"{self.name}.crt",
                certs / f"{self.name}.key",
                certs / "ca.crt",
                timeout,
                MAX_FRAME_BYTES,
                QUIC_IDLE_TIMEOUT,
                **extra,
            )
            self.tls_resumed = bool(getattr(self.link, "resumed", False))
        else:
            assert self.ctx is not None
            self.link = await connect_websocket(url, self.ctx, timeout, MAX_FRAME_BYTES)
        self.t_link = time.monotonic()
        self.tasks = [
            asyncio.create_task(self.read_loop(), name=f"read:{self.name}"),
            asyncio.create_task(self.ack_loop(), name=f"ack:{self.name}"),
        ]
        try:
            self.t_hello = time.monotonic()
            await self.hello()
            await asyncio.wait_for(self.welcomed.wait(), 60)
        except BaseException:
            await self.close()
            raise
        if self.closed is not None:
            await self.close()
            raise ConnectionError(self.closed)

    def timing(self) -> dict[str, float]:
        """Of the last open(): connect start -> link up -> hello sent -> welcome received."""
        return {
            "link_s": self.t_link - self.t_connect,
            "hello_to_welcome_s": self.t_welcome - self.t_hello,
            "total_s": self.t_welcome - self.t_connect,
        }

    async def hello(self) -> None:
        from shared.protocol.session import Session, SessionConfig
        from shared.protocol.states import Role

        self.session = Session(
            Role.EDGE, SessionConfig(), time.monotonic(), time.time_ns() // 1_000_000
        )
        self.received_rv = self.acked_rv
        self.session.send_hello(
            self.acked_rv,
            {
                "software": "bench/edge-sim",
                "store_id": f"bench-{self.name}",
                "labels": dict(self.worker.spec.get("labels", {})),
                "capacity": {},
            },
            time.monotonic(),
        )
        await self.flush()

    async def flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            await self.link.send(out)  # one write per batch (one QUIC stream write)

    async def read_loop(self) -> None:
        from shared.errors import LinkError

        link = self.link
        while True:
            try:
                frame = await link.recv()
            except LinkError as exc:
                self.lost(f"link lost: {exc}")
                return
            self.on_frame(frame, time.monotonic())
            if self.pending:
                self.ack_wake.set()

    async def ack_loop(self) -> None:
        from shared.errors import LinkError

        while True:
            await self.ack_wake.wait()
            self.ack_wake.clear()
            batch, self.pending = self.pending, []
            if not batch:
                continue
            now = time.monotonic()
            try:
                await self.ack(max(item[3] for item in batch), now)
            except LinkError as exc:
                self.lost(f"link lost while acking: {exc}")
                return
            self.worker.acked(self, batch, now)

    def lost(self, why: str) -> None:
        if self.breaking:  # broken on purpose (reconnect measurement): not an error
            if self.closed is None:
                self.closed = why
                self.welcomed.set()
            return
        super().lost(why)

    def on_frame(self, frame: bytes, now: float) -> None:
        from shared.protocol.events import (
            ErrorReceived,
            MessageReceived,
            SessionClosed,
            WelcomeReceived,
        )

        session = self.session
        session.receive_frame(frame, now)
        for event in session.events_received():
            if type(event) is MessageReceived:
                env = event.envelope
                body = env.body or {}
                gen = body.get("generation", 0) if env.op.value == "apply" else -1
                res = env.res or ""
                rv = env.rv or 0
                self.pending.append((res, gen, now, rv, math.nan))
                self.received_rv = max(self.received_rv, rv)
                if self.first_msg is None:
                    self.first_msg = (now, res, gen, rv)
                want = self.want
                if want is not None and res == want[0] and gen >= want[1]:
                    self.want = None
                    self.t_want = now
                    self.got_want.set()
                if self.worker.msg_bytes == 0:
                    self.worker.msg_bytes = len(frame)
            elif type(event) is WelcomeReceived:
                self.t_welcome = now
                self.resync = event.resync
                self.welcomed.set()
            elif type(event) is ErrorReceived:
                self.worker.errors.append(
                    f"{self.name}: error from cloud: {event.code}: {event.reason}"
                )
            elif type(event) is SessionClosed:
                self.lost(f"session closed: {event.code}: {event.reason}")
        out = session.data_to_send()
        if out:  # pongs
            self._spawn_send(out)

    def _spawn_send(self, frames: list[bytes]) -> None:
        task = asyncio.create_task(self._send(frames))
        self.worker.background.add(task)
        task.add_done_callback(self.worker.background.discard)

    async def _send(self, frames: list[bytes]) -> None:
        try:
            await self.link.send(frames)
        except Exception as exc:
            self.lost(f"send failed: {exc}")

    async def ack(self, top: int, now: float) -> None:
        self.session.ack(top, now)
        await self.flush()
        self.acked_rv = max(self.acked_rv, top)

    def tick(self, now: float) -> None:
        self.session.handle_timer(now)
        out = self.session.data_to_send()
        if out:
            self._spawn_send(out)

    def break_link(self) -> None:
        """Drop the link abruptly, with no goodbye of any layer.

        WebSocket: abort the TCP transport (no TLS close_notify, no close frame);
        the cloud's kernel sees a FIN/RST. QUIC: stop the connection's timers and
        close its UDP socket without sending CONNECTION_CLOSE; the cloud learns
        nothing until the node's new connection replaces the old one (or its idle
        timeout fires).
        """
        self.breaking = True
        for task in self.tasks:
            task.cancel()
        link = self.link
        if self.worker.transport == "quic":
            proto = link._protocol
            if proto._timer is not None:
                proto._timer.cancel()
                proto._timer = None
            proto.transmit = lambda: None  # a dead endpoint: nothing leaves it any more
            if proto._transport is not None:
                proto._transport.close()
        else:
            transport = link._conn.transport
            if transport is not None:
                transport.abort()
        self.closed = "broken on purpose"

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.link is not None and not self.breaking:
            try:
                await asyncio.wait_for(self.link.close(), 3)
            except Exception:
                pass


class BaselineConn(SimConn):
    """Bare websockets client: JSON in, one small JSON ack per batch out."""

    async def hello(self) -> None:
        await self.ws.send(orjson.dumps({"op": "hello", "node": self.name}), text=True)

    def on_frame(self, frame: bytes, now: float) -> None:
        doc = orjson.loads(frame)
        op = doc.get("op")
        if op == "apply":
            self.pending.append((doc["res"], doc["body"]["generation"], now, doc["rv"], doc["t0"]))
            if self.worker.msg_bytes == 0:
                self.worker.msg_bytes = len(frame)
        elif op == "welcome":
            self.welcomed.set()

    async def ack(self, top: int, now: float) -> None:
        await self.ws.send(orjson.dumps({"op": "ack", "rv": top}), text=True)

    def tick(self, now: float) -> None:
        pass


class EdgeWorker:
    """Holds N simulated edges in one asyncio loop; driven over a pipe by the parent."""

    def __init__(self, pipe: Connection, spec: dict[str, Any]) -> None:
        self.pipe = pipe
        self.spec = spec
        self.conns: list[SimConn] = []
        self.records: list[tuple[str, int, float, float, float]] = []
        self.errors: list[str] = []
        self.msg_bytes = 0
        self.expected: dict[str, int] | None = None
        self.satisfied = 0
        self.target = 0
        self.done = asyncio.Event()
        self.background: set[asyncio.Task[None]] = set()
        self.transport: str = spec.get("transport", "websocket")
        self.cert_dir = Path(spec["cert_dir"])

    def new_ticket_cache(self) -> Any:
        """One TLS session-ticket cache per simulated edge, as edgecore keeps one per link
        client (only if this edgecore's connect_quic takes `tickets`)."""
        if self.transport != "quic" or not quic_takes_tickets():
            return None
        from edgecore.link import quic

        return quic.TicketCache()  # exists wherever connect_quic takes `tickets`

    def acked(
        self, conn: SimConn, batch: Sequence[tuple[str, int, float, int, float]], now: float
    ) -> None:
        records = self.records
        latest = conn.latest
        expected = self.expected
        for res, gen, t_recv, _rv, t0 in batch:
            records.append((res, gen, t_recv, now, t0))
            prev = latest.get(res, 0)
            if gen > prev:
                latest[res] = gen
                if expected is not None:
                    want = expected.get(res)
                    if want is not None and prev < want <= gen:
                        self.satisfied += 1
                        if self.satisfied >= self.target:
                            self.done.set()

    async def main(self) -> None:
        raise_nofile()
        queue = _start_pipe_reader(self.pipe)
        ticker = asyncio.create_task(self._ticker())
        try:
            while True:
                msg = await queue.get()
                kind = msg[0]
                if kind == "connect":
                    self.pipe.send(("ready", await self._connect_all(*msg[1:])))
                elif kind == "break":
                    self.pipe.send(("broken", await self._break(*msg[1:])))
                elif kind == "resume":
                    self.pipe.send(("resumed", await self._resume(*msg[1:])))
                elif kind == "collect":
                    self.pipe.send(("done", await self._collect(*msg[1:])))
                elif kind == "stop":
                    break
        finally:
            ticker.cancel()
            await asyncio.gather(*(c.close() for c in self.conns), return_exceptions=True)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            now = time.monotonic()
            for conn in self.conns:
                if conn.closed is None and conn.welcomed.is_set():
                    conn.tick(now)

    async def _connect_all(
        self, url: str, concurrency: int, handshake_sample: int = 0
    ) -> dict[str, Any]:
        """Open every connection. The first `handshake_sample` ones open one at a time
        (nothing else in flight: latency without queueing), the rest `concurrency` at a
        time. Failed opens are retried (3 s open timeout, 12 rounds)."""
        # Import the transports now, so no sample connect pays for the imports.
        from edgecore.link.quic import connect_quic  # noqa: F401
        from edgecore.link.websocket import client_context, connect_websocket  # noqa: F401
        from shared.protocol.session import Session  # noqa: F401

        mode = self.spec["mode"]
        certs = self.cert_dir
        ca = certs / "ca.crt"
        self.conns = []
        for i, name in enumerate(self.spec["nodes"]):
            if mode == "edgesync":
                ctx = None
                if self.transport == "websocket":
                    ctx = client_context(certs / f"{name}.crt", certs / f"{name}.key", ca)
                self.conns.append(EdgesyncConn(self, i, name, ctx))
            else:
                ctx = client_context(certs / f"{name}.crt", certs / f"{name}.key", ca)
                self.conns.append(BaselineConn(self, i, name, ctx))
        sem = asyncio.Semaphore(concurrency)
        failures: list[str] = []
        failed_per_attempt: list[int] = []
        attempts = self.spec.get("connect_attempts", 12)

        async def one(conn: SimConn) -> bool:
            async with sem:
                try:
                    await conn.open(url)
                    return True
                except Exception as exc:
                    failures.append(f"{conn.name}: {type(exc).__name__}: {exc}")
                    return False

        t0 = time.monotonic()
        # Handshake sample: sequential; a sample edge's time includes its failed attempts.
        sample: list[dict[str, Any]] = []
        for conn in self.conns[: max(0, handshake_sample)]:
            assert isinstance(conn, EdgesyncConn)
            t_start = time.monotonic()
            for attempt in range(1, attempts + 1):
                if await one(conn):
                    timing: dict[str, Any] = dict(conn.timing())
                    timing["until_open_s"] = conn.t_welcome - t_start
                    timing["attempts"] = attempt
                    timing["tls_resumed"] = conn.tls_resumed
                    sample.append(timing)
                    break
            else:
                sample.append({"failed": True, "attempts": attempts})
        t_bulk = time.monotonic()
        todo = [c for c in self.conns if c.closed is not None or not c.welcomed.is_set()]
        for _attempt in range(attempts):
            if not todo:
                break
            ok = await asyncio.gather(*(one(c) for c in todo))
            todo = [c for c, good in zip(todo, ok, strict=True) if not good]
            failed_per_attempt.append(len(todo))
        open_ = sum(1 for c in self.conns if c.closed is None and c.welcomed.is_set())
        return {
            "connect_s": round(time.monotonic() - t0, 3),
            "bulk_connect_s": round(time.monotonic() - t_bulk, 3),
            "open": open_,
            "failed_per_attempt": failed_per_attempt,
            "failures": failures[:5],
            "failure_count": len(failures),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "handshake_sample": sample,
        }

    async def _break(self, idx: int, expected: dict[str, int], timeout: float) -> dict[str, Any]:
        """Let edge `idx` settle (acked all of `expected`), then drop its link abruptly."""
        conn = self.conns[idx]
        assert isinstance(conn, EdgesyncConn)
        deadline = time.monotonic() + timeout

        def settled() -> bool:
            return (
                all(conn.latest.get(res, 0) >= gen for res, gen in expected.items())
                and not conn.pending
                and conn.acked_rv >= conn.received_rv
            )

        while not settled() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls 3 things
            await asyncio.sleep(0.002)
        was_settled = settled()
        t_break = time.monotonic()
        conn.break_link()
        return {"t_break": t_break, "cursor": conn.acked_rv, "settled": was_settled}

    async def _resume(
        self, idx: int, url: str, res: str, gen: int, timeout: float
    ) -> dict[str, Any]:
        """Reconnect edge `idx` with a new session resuming from its cursor, and wait for
        generation `gen` of `res` (applied while the link was down)."""
        conn = self.conns[idx]
        assert isinstance(conn, EdgesyncConn)
        conn.want = (res, gen)
        conn.got_want.clear()
        cursor = conn.acked_rv
        t_start = time.monotonic()
        deadline = t_start + timeout
        attempts = 0
        error = None
        while time.monotonic() < deadline:
            attempts += 1
            try:
                await conn.open(url)
                error = None
                break
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            return {"ok": False, "error": error, "attempts": attempts}
        t_open = time.monotonic()
        try:
            await asyncio.wait_for(conn.got_want.wait(), max(0.1, deadline - t_open))
        except (TimeoutError, asyncio.TimeoutError):
            return {"ok": False, "error": "applied generation not delivered", "attempts": attempts}
        first = conn.first_msg
        assert first is not None
        return {
            "ok": True,
            "attempts": attempts,
            "cursor": cursor,
            "t_start": t_start,
            "t_link": conn.t_link,
            "t_hello": conn.t_hello,
            "t_welcome": conn.t_welcome,
            "t_first": first[0],
            "t_want": conn.t_want,
            "first_is_applied": first[1] == res and first[2] >= gen,
            "first_rv": first[3],
            "resync": conn.resync,
            "tls_resumed": conn.tls_resumed,
        }

    async def _collect(self, expected: dict[str, int], timeout: float) -> dict[str, Any]:
        """Wait until every connection acked at least `expected[res]` for every res."""
        self.expected = expected
        self.target = len(self.conns) * len(expected)
        self.satisfied = sum(
            1 for c in self.conns for res, want in expected.items() if c.latest.get(res, 0) >= want
        )
        self.done.clear()
        if self.satisfied >= self.target:
            self.done.set()
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
            complete = True
        except (TimeoutError, asyncio.TimeoutError):
            complete = False
        records, self.records = self.records, []
        errors, self.errors = self.errors, []
        self.expected = None
        return {
            "records": records,
            "complete": complete,
            "satisfied": self.satisfied,
            "target": self.target,
            "errors": errors[:20],
            "error_count": len(errors),
            "msg_bytes": self.msg_bytes,
        }


def edge_worker_entry(pipe: Connection, spec: dict[str, Any]) -> None:
    try:
        asyncio.run(EdgeWorker(pipe, spec).main())
    except Exception as exc:
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise


def quic_takes_tickets() -> bool:
    """Whether this edgecore's connect_quic keeps TLS session tickets (resumption)."""
    import inspect

    from edgecore.link.quic import connect_quic

    return "tickets" in inspect.signature(connect_quic).parameters


# ---------------------------------------------------------------- lossy UDP proxy process


def udp_proxy_entry(pipe: Connection, spec: dict[str, Any]) -> None:
    """tests/helpers/udp_proxy.UdpProxy in its own process (its forwarding loop is Python:
    keep it off the cloud's and the edges' GIL). Drops `loss` of the datagrams each way."""
    try:
        from tests.helpers.udp_proxy import UdpProxy

        with UdpProxy("127.0.0.1", spec["target_port"], loss=spec["loss"], seed=spec["seed"]) as px:
            pipe.send(("listening", px.port))
            while True:
                msg = pipe.recv()
                if msg[0] == "stats":
                    pipe.send(("stats", {"forwarded": px.forwarded, "dropped": px.dropped}))
                elif msg[0] == "stop":
                    break
    except (EOFError, OSError):
        pass
    except Exception as exc:
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- baseline server process


class BaselineServer:
    """websockets.asyncio.server.serve pushing task-sized JSON to N bare clients."""

    def __init__(self, pipe: Connection, spec: dict[str, Any]) -> None:
        self.pipe = pipe
        self.spec = spec
        self.peers: dict[str, Any] = {}
        self.all_connected = asyncio.Event()
        k = spec["tasks"]
        self.res = [f"{RES_PREFIX}bench-{i}" for i in range(k)]
        self.gens = [0] * k
        self.docs = [canonical_document(i, 0) for i in range(k)]
        self.plan: list[tuple[int, int]] = []
        self.release_t: list[float] = []
        self.released = 0
        self.paced = False
        self.phase_done = asyncio.Event()
        self.finished = 0

    async def handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            hello = orjson.loads(await ws.recv(decode=False))
        except ConnectionClosed:
            return
        peer = {
            "ws": ws,
            "name": hello.get("node", "?"),
            "rv": 0,
            "acked": 0,
            "next": 0,
            "wake": asyncio.Event(),
        }
        self.peers[peer["name"]] = peer
        await ws.send(orjson.dumps({"op": "welcome"}), text=True)
        if len(self.peers) >= self.spec["clients"]:
            self.all_connected.set()
        try:
            async for frame in ws:
                doc = orjson.loads(frame)
                if doc.get("op") == "ack":
                    peer["acked"] = doc["rv"]
                    peer["wake"].set()
        except ConnectionClosed:
            pass
        finally:
            peer["wake"].set()

    async def pump(self, peer: dict[str, Any]) -> None:
        ws, wake = peer["ws"], peer["wake"]
        plan, total = self.plan, len(self.plan)
        res, docs = self.res, self.docs
        try:
            while peer["next"] < total:
                if peer["next"] < self.released and peer["rv"] - peer["acked"] < WINDOW:
                    r = peer["next"]
                    peer["next"] = r + 1
                    k, gen = plan[r]
                    peer["rv"] += 1
                    now = time.monotonic()
                    wall = time.time_ns() // 1_000_000
                    msg = {
                        "v": 1,
                        "id": new_ulid(wall),
                        "ts": wall,
                        "op": "apply",
                        "res": res[k],
                        "rv": peer["rv"],
                        "body": {"document": docs[k], "generation": gen, "epoch": 1},
                        "t0": self.release_t[r] if self.paced else now,
                    }
                    await ws.send(orjson.dumps(msg), text=True)
                    continue
                wake.clear()
                if peer["next"] < self.released and peer["rv"] - peer["acked"] < WINDOW:
                    continue
                if ws.state.name != "OPEN":
                    return
                await wake.wait()
        except Exception:
            return
        finally:
            self.finished += 1
            if self.finished >= len(self.peers):
                self.phase_done.set()

    async def run_phase(self, rounds: int, rate: float | None) -> dict[str, Any]:
        k = len(self.res)
        self.plan = []
        for r in range(rounds):
            task = r % k
            self.gens[task] += 1
            self.plan.append((task, self.gens[task]))
        expected = {self.res[i]: self.gens[i] for i in range(k) if self.gens[i]}
        self.release_t = [0.0] * rounds
        self.paced = rate is not None
        self.released = 0
        self.finished = 0
        self.phase_done.clear()
        for peer in self.peers.values():
            peer["next"] = 0
        self.pipe.send(("planned", expected))
        t_start = time.monotonic()
        pumps = [asyncio.create_task(self.pump(p)) for p in self.peers.values()]
        if rate is None:
            self.released = rounds
            for peer in self.peers.values():
                peer["wake"].set()
        else:
            for r in range(rounds):
                target = t_start + r / rate
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.release_t[r] = time.monotonic()
                self.released = r + 1
                for peer in self.peers.values():
                    peer["wake"].set()
        await asyncio.gather(*pumps)
        return {"t_start": t_start, "t_sent": time.monotonic()}

    async def main(self) -> None:
        from websockets.asyncio.server import serve

        from cloudcore.hub.tls import server_context

        raise_nofile()
        d = Path(self.spec["tls_dir"])
        ctx = server_context(Path(d / "server.crt"), Path(d / "server.key"), Path(d / "ca.crt"))
        queue = _start_pipe_reader(self.pipe)
        async with serve(
            self.handler,
            "127.0.0.1",
            0,
            ssl=ctx,
            compression=None,
            ping_interval=None,
            max_size=MAX_FRAME,
            backlog=4096,
        ) as server:
            port = server.sockets[0].getsockname()[1]
            self.pipe.send(("listening", port))
            while True:
                msg = await queue.get()
                if msg[0] == "run":
                    await asyncio.wait_for(self.all_connected.wait(), 120)
                    self.pipe.send(("ran", await self.run_phase(*msg[1:])))
                elif msg[0] == "stop":
                    break
            server.close()


def baseline_server_entry(pipe: Connection, spec: dict[str, Any]) -> None:
    try:
        asyncio.run(BaselineServer(pipe, spec).main())
    except Exception as exc:
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    idx = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[idx]


def summarize(
    records: Sequence[tuple[str, int, float, float, float]],
    t0_of: Callable[[tuple[str, int, float, float, float]], float | None],
    t_begin: float,
) -> dict[str, Any]:
    """msgs/s over [t_begin, last ack] and latency percentiles of t_ack - t0."""
    if not records:
        return {"messages": 0, "msgs_per_s": 0.0, "p50_ms": None, "p99_ms": None}
    last_ack = max(r[3] for r in records)
    lat = []
    for rec in records:
        t0 = t0_of(rec)
        if t0 is not None and not math.isnan(t0):
            lat.append((rec[3] - t0) * 1000.0)
    lat.sort()
    span = max(last_ack - t_begin, 1e-9)
    out = {
        "messages": len(records),
        "msgs_per_s": round(len(records) / span, 1),
        "p50_ms": round(percentile(lat, 0.50), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "p90_ms": round(percentile(lat, 0.90), 2),
        "max_ms": round(lat[-1], 2) if lat else None,
        "min_ms": round(lat[0], 2) if lat else None,
        "span_s": round(span, 3),
    }
    if lat and lat[0] < 0:
        out["acked_before_apply_returned"] = sum(1 for x in lat if x < 0)
    return out


# ---------------------------------------------------------------- edgesync case


class CloudProcess:
    def __init__(
        self,
        root: Path,
        synchronous: str,
        profile_prefix: Path | None,
        ports: dict[str, int] | None = None,
    ) -> None:
        self.root = root
        self.data_dir = root / "cloud"
        ports = ports or {"websocket_port": 0, "quic_port": 0, "api_port": 0}
        config = {
            "sqlite_synchronous": synchronous,
            "log_level": "INFO",
            "hub": {
                "websocket_port": ports["websocket_port"],
                "quic_port": ports["quic_port"],
                "listen": "127.0.0.1",
            },
            "api": {"port": ports["api_port"], "listen": "127.0.0.1"},
            "pki": {"hosts": ["127.0.0.1", "localhost"]},
        }
        cfg = root / "cloudcore.yaml"
        cfg.write_text(yaml.safe_dump(config))
        args = ["--config", str(cfg), "--data-dir", str(self.data_dir)]
        if profile_prefix is not None:
            argv = [
                sys.executable,
                str(Path(__file__).with_name("_profiled_cloudcore.py")),
                str(profile_prefix),
                "--",
                *args,
            ]
        else:
            argv = [sys.executable, "-m", "cloudcore", *args]
        self.daemon = Daemon("cloudcore", argv, root / "cloudcore.log")

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        runtime = self.data_dir / "cloudcore.json"
        self.daemon.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if runtime.exists():
                try:
                    info: dict[str, Any] = orjson.loads(runtime.read_bytes())
                    self.ctl = yaml.safe_load((self.data_dir / "edgectl.yaml").read_text())
                    return info
                except (ValueError, OSError, yaml.YAMLError):
                    pass
            if not self.daemon.running:
                raise RuntimeError(f"cloudcore exited:\n{self.daemon.log_text()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError("cloudcore did not start")

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM; SIGKILL after `timeout` s (its data is thrown away). Exit code."""
        return self.daemon.stop(timeout)


class Api:
    """The operator API and join endpoint over aiohttp (bearer token, pinned CA)."""

    def __init__(self, server: str, token: str, ca_pem: str) -> None:
        import aiohttp

        self.server = server.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        ctx = ssl.create_default_context(cadata=ca_pem)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=64),
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def post(self, path: str, body: Any, auth: bool = True) -> Any:
        async with self.http.post(
            self.server + path,
            data=orjson.dumps(body),
            headers=self.headers if auth else {"Content-Type": "application/json"},
        ) as resp:
            data = await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"POST {path}: HTTP {resp.status}: {data[:300]!r}")
            return orjson.loads(data)

    async def get(self, path: str) -> Any:
        async with self.http.get(self.server + path, headers=self.headers) as resp:
            data = await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"GET {path}: HTTP {resp.status}: {data[:300]!r}")
            return orjson.loads(data)

    async def sessions_gone(self, timeout: float) -> tuple[float, int]:
        """Wait until cloudcore holds no edge session (GET /healthz); (seconds, left)."""
        t0 = time.monotonic()
        left = -1
        while True:
            try:
                left = int((await self.get("/healthz")).get("sessions", -1))
            except Exception:
                left = -1
            if left == 0 or time.monotonic() - t0 >= timeout:
                return time.monotonic() - t0, left
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.http.close()


async def join_nodes(api: Api, names: list[str], cert_dir: Path, concurrency: int) -> float:
    """Real joins: token + CSR per node, `concurrency` in flight."""
    sem = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()

    async def one(name: str) -> None:
        key = pki.generate_key()
        csr = pki.create_csr(key, name)
        async with sem:
            token = await api.post("/api/v1/tokens", {"node": name, "ttl": 3600})
            joined = await api.post(
                "/join", {"token": token["token"], "csr": csr.decode()}, auth=False
            )
        (cert_dir / f"{name}.key").write_bytes(pki.key_to_pem(key))
        (cert_dir / f"{name}.crt").write_text(joined["certificate"])

    await asyncio.gather(*(one(n) for n in names))
    return time.monotonic() - t0


class Applier:
    """Applies generation bumps of tasks bench-0..K-1 and remembers when each returned."""

    def __init__(self, api: Api, tasks: int) -> None:
        self.api = api
        self.tasks = tasks
        self.stamp = 0
        self.returned: dict[tuple[str, int], float] = {}
        self.requested: dict[tuple[str, int], float] = {}
        self.calls: list[float] = []  # API call durations, s

    async def apply(self, k: int) -> tuple[float, float, int]:
        self.stamp += 1
        doc = task_document(k, self.stamp, {})  # empty selector: every node
        t_req = time.monotonic()
        view = await self.api.post("/api/v1/tasks", doc)
        t_ret = time.monotonic()
        gen = int(view["generation"])
        self.returned[(f"{RES_PREFIX}bench-{k}", gen)] = t_ret
        self.requested[(f"{RES_PREFIX}bench-{k}", gen)] = t_req
        self.calls.append(t_ret - t_req)
        return t_req, t_ret, gen

    async def apply_pinned(self, name: str, node: str) -> int:
        """Create or bump task `name`, placed on `node` only; returns its generation."""
        self.stamp += 1
        view = await self.api.post("/api/v1/tasks", pinned_task_document(name, node, self.stamp))
        return int(view["generation"])


def _ms(values: Sequence[float]) -> dict[str, Any]:
    vals = sorted(v * 1000.0 for v in values)
    if not vals:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(percentile(vals, 0.5), 2),
        "p99_ms": round(percentile(vals, 0.99), 2),
        "max_ms": round(vals[-1], 2),
    }


def handshake_summary(sample: list[dict[str, Any]], transport: str) -> dict[str, Any]:
    ok = [s for s in sample if not s.get("failed")]
    out: dict[str, Any] = {
        "sample": len(sample),
        "concurrency": 1,
        "opened": len(ok),
        "failed": len(sample) - len(ok),
        "retried": sum(1 for s in ok if s["attempts"] > 1),
    }
    out.update(_ms([s["until_open_s"] for s in ok]))
    out["first_ms"] = round(ok[0]["until_open_s"] * 1000.0, 2) if ok else None
    for key, name in (("link_s", "link"), ("hello_to_welcome_s", "hello_to_welcome")):
        stats = _ms([s[key] for s in ok])
        out[f"{name}_p50_ms"] = stats["p50_ms"]
        out[f"{name}_p99_ms"] = stats["p99_ms"]
    if transport == "quic":
        out["tls_resumed"] = sum(1 for s in ok if s.get("tls_resumed"))
    return out


def reconnect_summary(
    recs: list[dict[str, Any]], transport: str, replaced: int, tickets: bool
) -> dict[str, Any]:
    ok = [r for r in recs if r.get("ok")]
    out: dict[str, Any] = {
        "sample": len(recs),
        "concurrency": 1,
        "resumed": len(ok),
        "failed": len(recs) - len(ok),
        "errors": [r["error"] for r in recs if not r.get("ok")][:5],
        "break": "abort the TCP transport (no TLS close_notify, no close frame)"
        if transport == "websocket"
        else "close the UDP socket and stop the timers, no CONNECTION_CLOSE sent",
    }
    out.update(_ms([r["t_want"] - r["t_start"] for r in ok]))
    for name, values in (
        ("link", [r["t_link"] - r["t_start"] for r in ok]),
        ("hello_to_welcome", [r["t_welcome"] - r["t_hello"] for r in ok]),
        ("welcome_to_delivered", [r["t_want"] - r["t_welcome"] for r in ok]),
        ("break_to_resumed", [r["t_want"] - r["t_break"] for r in ok]),
        ("down", [r["t_start"] - r["t_break"] for r in ok]),
    ):
        stats = _ms(values)
        out[f"{name}_p50_ms"] = stats["p50_ms"]
        out[f"{name}_p99_ms"] = stats["p99_ms"]
    out["without_resync"] = sum(1 for r in ok if r["resync"] is False)
    out["first_message_was_the_applied_one"] = sum(1 for r in ok if r["first_is_applied"])
    out["retried"] = sum(1 for r in ok if r["attempts"] > 1)
    out["cloud_replaced_old_session"] = replaced
    if transport == "quic":
        out["tls_resumed"] = sum(1 for r in ok if r.get("tls_resumed"))
        out["quic_session_tickets"] = tickets
    return out


async def run_edgesync(
    n: int,
    args: argparse.Namespace,
    root: Path,
    synchronous: str,
    profile_prefix: Path | None,
    transports: Sequence[str],
    *,
    ports: dict[str, int] | None = None,
    quic_proxy_loss: float | None = None,
) -> tuple[dict[str, dict[str, Any]], Path, list[str], dict[str, Any], dict[str, Any]]:
    """One cloudcore and N joined nodes; then, per transport in turn, N simulated edges
    over that transport: connect (handshake sample), catch-up, max phase, paced phase,
    reconnect sample. Returns (results per transport, cert dir, names, the first
    transport's plan for the baseline, common setup)."""
    cert_dir = root / "nodes"
    cert_dir.mkdir(parents=True)
    names = [f"n{i:05d}" for i in range(n)]
    cloud = CloudProcess(root, synchronous, profile_prefix, ports)
    api: Api | None = None
    proxy: Child | None = None
    results: dict[str, dict[str, Any]] = {}
    plans: dict[str, dict[str, Any]] = {}
    setup: dict[str, Any] = {}
    try:
        info = cloud.start()
        api = Api(cloud.ctl["server"], cloud.ctl["token"], cloud.ctl["ca"])
        (cert_dir / "ca.crt").write_text(cloud.ctl["ca"])
        log(f"edgesync N={n}: cloudcore pid {cloud.pid} up, joining {n} nodes")
        setup["join_s"] = round(await join_nodes(api, names, cert_dir, args.join_concurrency), 2)
        applier = Applier(api, args.tasks)
        k_tasks = args.tasks
        # Create the K tasks (N desired rows each) before the edges connect; they catch up
        # on connect (applied_rv 0), which is the warm-up.
        t = time.monotonic()
        current: dict[str, int] = {}
        for k in range(k_tasks):
            _t_req, _t_ret, gen = await applier.apply(k)
            current[f"{RES_PREFIX}bench-{k}"] = gen
        setup["create_tasks_s"] = round(time.monotonic() - t, 2)
        log(
            f"edgesync N={n}: {n} joins in {setup['join_s']}s, {k_tasks} tasks created in "
            f"{setup['create_tasks_s']}s"
        )
        urls = {
            "websocket": f"wss://127.0.0.1:{info['websocket_port']}/edgesync/v1",
            "quic": f"quic://127.0.0.1:{info['quic_port']}",
        }
        udp_ports = {"cloud_quic": int(info["quic_port"])}
        if quic_proxy_loss is not None:
            proxy = Child(
                "udp-proxy",
                udp_proxy_entry,
                {"target_port": info["quic_port"], "loss": quic_proxy_loss, "seed": 1},
            )
            proxy_port = (await proxy.reply(30))[1]
            urls["quic"] = f"quic://127.0.0.1:{proxy_port}"
            udp_ports["udp_proxy_front"] = int(proxy_port)
            setup["udp_proxy"] = {"port": proxy_port, "loss": quic_proxy_loss}
        for i, transport in enumerate(transports):
            t = time.monotonic()
            results[transport], plans[transport] = await run_transport(
                n,
                args,
                transport,
                urls[transport],
                cloud,
                applier,
                current,
                names,
                cert_dir,
                profile_prefix if i == 0 else None,
                proxy,
                udp_ports,
                10.0 if i + 1 < len(transports) else 0.0,
            )
            results[transport]["transport_wall_s"] = round(time.monotonic() - t, 1)
        if proxy is not None:
            proxy.send("stats")
            stats = (await proxy.reply(30))[1]
            total = stats["forwarded"] + stats["dropped"]
            setup["udp_proxy"].update(stats)
            setup["udp_proxy"]["dropped_fraction"] = (
                round(stats["dropped"] / total, 4) if total else None
            )
        return results, cert_dir, names, plans[transports[0]], setup
    finally:
        if proxy is not None:
            proxy.stop()
        if api is not None:
            await api.close()
        t_stop = time.monotonic()
        code = cloud.stop()
        stop_s = time.monotonic() - t_stop
        setup["cloudcore_stop"] = {"s": round(stop_s, 2), "exit_code": code}
        log(f"edgesync N={n}: cloudcore stopped in {stop_s:.1f}s (exit code {code})")
        if profile_prefix is not None:
            log(f"profile summary: {profile_prefix}.txt")


async def run_transport(
    n: int,
    args: argparse.Namespace,
    transport: str,
    url: str,
    cloud: CloudProcess,
    applier: Applier,
    current: dict[str, int],
    names: list[str],
    cert_dir: Path,
    profile_prefix: Path | None,
    proxy: Child | None,
    udp_ports: dict[str, int],
    drain_wait: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    tag = f"edgesync N={n} {transport}"
    k_tasks = args.tasks
    result: dict[str, Any] = {}
    setup: dict[str, Any] = {}
    worker: Child | None = None
    try:
        # Labels in the hello differ from the join's empty ones only with --hello-labels: then
        # every first connect re-runs the scheduler (see README: connect storm).
        labels = {"bench": "yes"} if args.hello_labels else {}
        worker = Child(
            f"edge-sim-{transport}",
            edge_worker_entry,
            {
                "mode": "edgesync",
                "transport": transport,
                "nodes": names,
                "cert_dir": str(cert_dir),
                "labels": labels,
            },
        )
        sample = min(args.handshake_sample, n)
        log(f"{tag}: connecting {n} edges to {url} ({sample} one at a time first)")
        udp0 = udp_counters()
        worker.send("connect", url, args.connect_concurrency, sample)
        ready = (await worker.reply(600))[1]
        ready["udp_drops"] = udp_drops_between(udp0, udp_counters(), udp_ports)
        t_connected = time.monotonic()
        result["handshake"] = handshake_summary(ready.pop("handshake_sample"), transport)
        setup["connect"] = ready
        hs = result["handshake"]
        log(
            f"{tag}: {ready['open']}/{n} sessions open in {ready['connect_s']}s; handshake "
            f"(sequential, {hs['opened']}) p50 {hs['p50_ms']} ms, p99 {hs['p99_ms']} ms"
        )
        if ready["open"] != n:
            raise RuntimeError(
                f"only {ready['open']}/{n} edge sessions opened: {ready['failures']}"
            )

        pids = {"cloudcore": cloud.pid, "edge_sim": worker.pid, "driver": os.getpid()}
        if proxy is not None:
            pids["udp_proxy"] = proxy.pid

        async def collect(expected: dict[str, int], what: str) -> dict[str, Any]:
            assert worker is not None
            worker.send("collect", expected, args.collect_timeout)
            got = (await worker.reply(args.collect_timeout + 60))[1]
            if not got["complete"]:
                log(f"{tag} {what}: INCOMPLETE {got['satisfied']}/{got['target']}")
            if got["error_count"]:
                log(f"{tag} {what}: {got['error_count']} errors: {got['errors'][:3]}")
            out: dict[str, Any] = got
            return out

        warm = await collect(dict(current), "catch-up")
        setup["catchup_after_connect_s"] = round(time.monotonic() - t_connected, 2)
        setup["catchup_complete"] = warm["complete"]
        setup["msg_bytes"] = warm["msg_bytes"]
        log(
            f"{tag}: catch-up of {len(warm['records'])} msgs done "
            f"{setup['catchup_after_connect_s']}s after the last session opened"
        )

        def t0_of(rec: tuple[str, int, float, float, float]) -> float | None:
            return applier.returned.get((rec[0], rec[1]))

        def from_request(records: Sequence[tuple[str, int, float, float, float]]) -> dict[str, Any]:
            lat = sorted(
                (r[3] - applier.requested[(r[0], r[1])]) * 1000.0
                for r in records
                if (r[0], r[1]) in applier.requested
            )
            return {
                "p50_ms_from_apply_request": round(percentile(lat, 0.5), 2),
                "p99_ms_from_apply_request": round(percentile(lat, 0.99), 2),
            }

        # ---- max phase: K concurrent appliers.
        target_applies = args.messages_per_node
        count = 0
        stop_at = time.monotonic() + args.duration
        first_req: list[float] = []
        calls_before = len(applier.calls)

        async def apply_loop(first: int) -> None:
            nonlocal count
            k = first - args.appliers
            while True:
                k = (k + args.appliers) % k_tasks
                if target_applies is not None:
                    if count >= target_applies:
                        return
                elif time.monotonic() >= stop_at:
                    return
                count += 1
                t_req, _t_ret, gen = await applier.apply(k)
                first_req.append(t_req)
                res = f"{RES_PREFIX}bench-{k}"
                current[res] = max(gen, current[res])

        if profile_prefix is not None:
            cloud.daemon.signal(signal.SIGUSR1)  # start the stack sampler
        meter = CpuMeter(pids)
        udp0 = udp_counters()
        t_phase = time.monotonic()
        await asyncio.gather(*(apply_loop(k) for k in range(min(args.appliers, k_tasks))))
        t_applied = time.monotonic()
        got = await collect(dict(current), "max")
        cpu = meter.stop()
        applies = count
        stats = summarize(got["records"], t0_of, min(first_req))
        stats.update(from_request(got["records"]))
        calls = sorted(applier.calls[calls_before:])
        stats.update(
            {
                "applies": applies,
                "messages_per_node": applies,
                "desired_rows_written": applies * n,
                "superseded": applies * n - len(got["records"]),
                "apply_rows_per_s": round(applies * n / max(t_applied - t_phase, 1e-9), 1),
                "apply_call_p50_ms": round(percentile(calls, 0.5) * 1000, 1),
                "apply_call_p99_ms": round(percentile(calls, 0.99) * 1000, 1),
                "apply_s": round(t_applied - t_phase, 2),
                "drain_after_last_apply_s": round(
                    max((r[3] for r in got["records"]), default=t_applied) - t_applied, 2
                ),
                "complete": got["complete"],
                "errors": got["error_count"],
                "cpu_pct": cpu,
                "cpu_us_per_msg": meter.per_message_us(cpu, len(got["records"])),
                "udp_drops": udp_drops_between(udp0, udp_counters(), udp_ports),
            }
        )
        result["edgesync"] = stats
        log(
            f"{tag} max: {stats['messages']} msgs, {stats['msgs_per_s']} msg/s, "
            f"p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms; cpu {cpu}; "
            f"udp drops {stats['udp_drops']}"
        )

        # ---- paced phase at half the measured max rate.
        rate_msgs = stats["msgs_per_s"] / 2.0
        applies_per_s = max(rate_msgs / n, 0.01)
        if args.messages_per_node is not None:
            paced_applies = args.messages_per_node
        else:
            paced_applies = max(2, int(applies_per_s * args.paced_duration))
        meter = CpuMeter(pids)
        udp0 = udp_counters()
        t_phase = time.monotonic()
        first_req = []
        behind = 0
        for i in range(paced_applies):
            target = t_phase + i / applies_per_s
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.5 / applies_per_s:
                behind += 1
            k = i % k_tasks
            t_req, _t_ret, gen = await applier.apply(k)
            first_req.append(t_req)
            current[f"{RES_PREFIX}bench-{k}"] = gen
        got = await collect(dict(current), "paced")
        cpu = meter.stop()
        paced = summarize(got["records"], t0_of, t_phase)
        paced.update(from_request(got["records"]))
        paced.update(
            {
                "target_msgs_per_s": round(applies_per_s * n, 1),
                "applies_per_s": round(applies_per_s, 3),
                "applies": paced_applies,
                "achieved_apply_rate": round(
                    (paced_applies - 1) / max(first_req[-1] - first_req[0], 1e-9), 3
                )
                if paced_applies > 1
                else None,
                "applies_late": behind,
                "superseded": paced_applies * n - len(got["records"]),
                "complete": got["complete"],
                "errors": got["error_count"],
                "cpu_pct": cpu,
                "cpu_us_per_msg": meter.per_message_us(cpu, len(got["records"])),
                "udp_drops": udp_drops_between(udp0, udp_counters(), udp_ports),
            }
        )
        result["edgesync_paced"] = paced
        if profile_prefix is not None:
            cloud.daemon.signal(signal.SIGUSR2)  # stop the sampler, write .sample.txt
        log(
            f"{tag} paced @{paced['target_msgs_per_s']} msg/s: {paced['messages']} msgs, "
            f"p50 {paced['p50_ms']} ms, p99 {paced['p99_ms']} ms"
        )

        # ---- reconnect sample: break, apply while down, reconnect and resume.
        r_count = min(args.reconnect_sample, n)
        picks = sorted({(i * n) // max(r_count, 1) for i in range(r_count)})
        log_before = cloud.daemon.log_text().count("replaces the one from")
        recs: list[dict[str, Any]] = []
        for idx in picks:
            task = f"rc-{transport}-{names[idx]}"
            res = f"{RES_PREFIX}{task}"
            worker.send("break", idx, dict(current), 10.0)
            broken = (await worker.reply(30))[1]
            gen = await applier.apply_pinned(task, names[idx])  # one desired row, this node's
            worker.send("resume", idx, url, res, gen, 30.0)
            rec = (await worker.reply(90))[1]
            rec.update(t_break=broken["t_break"], settled=broken["settled"])
            recs.append(rec)
        replaced = cloud.daemon.log_text().count("replaces the one from") - log_before
        result["reconnect"] = reconnect_summary(recs, transport, replaced, quic_takes_tickets())
        rc = result["reconnect"]
        log(
            f"{tag}: reconnect-to-resumed ({rc['resumed']}/{rc['sample']}) p50 {rc['p50_ms']} "
            f"ms, p99 {rc['p99_ms']} ms; break-to-resumed p50 {rc['break_to_resumed_p50_ms']} ms"
        )
        plan = {"max_rounds": applies, "paced_rounds": paced_applies, "paced_rate": applies_per_s}
        result["setup"] = setup
        return result, plan
    finally:
        if worker is not None:
            t_stop = time.monotonic()
            worker.stop()
            stopped = time.monotonic() - t_stop
            # The next transport starts once the cloud has let go of every session of
            # this one (up to `drain_wait` s; 0 = look once: the cloud stops next).
            gone_s, left = await applier.api.sessions_gone(drain_wait)
            setup["teardown"] = {
                "edge_process_stop_s": round(stopped, 2),
                "cloud_sessions_gone_s": round(gone_s, 2),
                "cloud_sessions_left": left,
            }
            log(
                f"{tag}: edge process stopped in {stopped:.1f}s; cloudcore held "
                f"{'no' if left == 0 else left} session(s) {gone_s:.1f}s later"
            )


# ---------------------------------------------------------------- baseline case


async def run_baseline(
    n: int,
    args: argparse.Namespace,
    cert_dir: Path,
    tls_dir: Path,
    names: list[str],
    plan: dict[str, Any],
) -> dict[str, Any]:
    server = Child(
        "baseline-server",
        baseline_server_entry,
        {"tls_dir": str(tls_dir), "clients": n, "tasks": args.tasks},
    )
    clients: Child | None = None
    out: dict[str, Any] = {}
    try:
        port = (await server.reply(60))[1]
        clients = Child(
            "baseline-clients",
            edge_worker_entry,
            {"mode": "baseline", "nodes": names, "cert_dir": str(cert_dir)},
        )
        clients.send("connect", f"wss://127.0.0.1:{port}/", args.connect_concurrency)
        ready = (await clients.reply(300))[1]
        log(f"baseline N={n}: {ready['open']}/{n} clients in {ready['connect_s']}s")
        if ready["open"] != n:
            raise RuntimeError(f"only {ready['open']}/{n} baseline clients: {ready['failures']}")
        pids = {"server": server.pid, "clients": clients.pid, "driver": os.getpid()}

        async def phase(rounds: int, rate: float | None, what: str) -> dict[str, Any]:
            assert clients is not None
            meter = CpuMeter(pids)
            server.send("run", rounds, rate)
            expected = (await server.reply(60))[1]
            clients.send("collect", expected, args.collect_timeout)
            got = (await clients.reply(args.collect_timeout + 60))[1]
            ran = (await server.reply(args.collect_timeout + 60))[1]
            cpu = meter.stop()
            if not got["complete"]:
                log(f"baseline N={n} {what}: INCOMPLETE {got['satisfied']}/{got['target']}")
            stats = summarize(got["records"], lambda r: r[4], ran["t_start"])
            stats.update(
                {
                    "rounds": rounds,
                    "complete": got["complete"],
                    "msg_bytes": got["msg_bytes"],
                    "errors": got["error_count"],
                    "cpu_pct": cpu,
                }
            )
            log(
                f"baseline N={n} {what}: {stats['messages']} msgs, {stats['msgs_per_s']} msg/s, "
                f"p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms; cpu {cpu}"
            )
            return stats

        await phase(max(1, args.tasks), None, "warm-up")
        # The same message count as edgesync's max phase can be only milliseconds of work
        # for the baseline (start-up dominated), so that run is reported as
        # `baseline_same_count` and `baseline` is a run sized to last ~--baseline-seconds.
        same = await phase(plan["max_rounds"], None, "max, same count")
        out["baseline_same_count"] = same
        rate = max(2.0 * same["msgs_per_s"], 20000.0)  # generous: a faster run just ends sooner
        rounds = max(plan["max_rounds"], int(rate * args.baseline_seconds / n))
        out["baseline"] = await phase(rounds, None, "max, steady")
        paced = await phase(plan["paced_rounds"], plan["paced_rate"], "paced")
        paced["target_msgs_per_s"] = round(plan["paced_rate"] * n, 1)
        out["baseline_paced"] = paced
        return out
    finally:
        if clients is not None:
            clients.stop()
        server.stop()


# ---------------------------------------------------------------- main


def code_version() -> dict[str, Any]:
    """Hash of the measured code (other people edit it while benchmarks run)."""
    import hashlib

    digest = hashlib.sha256()
    newest = 0.0
    for pkg in ("cloudcore", "shared"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
            newest = max(newest, path.stat().st_mtime)
    edge = hashlib.sha256()
    for path in sorted((ROOT / "edgecore" / "link").rglob("*.py")):
        edge.update(str(path.relative_to(ROOT)).encode())
        edge.update(path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    return {
        "sha256_cloudcore_shared": digest.hexdigest()[:16],
        "sha256_edgecore_link": edge.hexdigest()[:16],
        "newest_file_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(newest)),
    }


def machine_info() -> dict[str, Any]:
    import aiohttp
    import sqlalchemy

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "websockets": websockets.version.version,
        "orjson": orjson.__version__,
        "aiohttp": aiohttp.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "openssl": ssl.OPENSSL_VERSION,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def _make_dirs(root: Path, profile_dir: Path | None) -> None:
    root.mkdir(parents=True)
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)


async def run_case(
    n: int, args: argparse.Namespace, synchronous: str, base: Path
) -> list[dict[str, Any]]:
    """One cloudcore for (N, synchronous); one case per transport, then the baseline."""
    root = base / f"n{n}-{synchronous.lower()}"
    t = time.monotonic()
    profile_prefix = (
        (Path(args.profile) / f"cloud-n{n}-{synchronous.lower()}") if args.profile else None
    )
    _make_dirs(root, profile_prefix.parent if profile_prefix is not None else None)
    code_at_start = code_version()  # the tree is edited concurrently: hash what this case ran
    transports = args.transport_list
    per, cert_dir, names, plan, common = await run_edgesync(
        n, args, root, synchronous, profile_prefix, transports
    )
    base_out: dict[str, Any] | None = None
    t_base = time.monotonic()
    if not args.skip_baseline:
        base_out = await run_baseline(n, args, cert_dir, root / "cloud" / "pki", names, plan)
    base_wall = round(time.monotonic() - t_base, 1)
    ws_rate = per.get("websocket", {}).get("edgesync", {}).get("msgs_per_s")
    cases = []
    for transport in transports:
        r = per[transport]
        case: dict[str, Any] = {
            "nodes": n,
            "sqlite_synchronous": synchronous,
            "transport": transport,
            "code": code_at_start,
        }
        for key in ("edgesync", "edgesync_paced", "handshake", "reconnect"):
            case[key] = r[key]
        if base_out is not None:
            if transport == transports[0]:
                case.update(base_out)  # the bare websockets baseline sits in one case
            else:
                case["baseline_in"] = f"the {transports[0]} case of this N and synchronous"
            b = base_out["baseline"]["msgs_per_s"]
            case["ratio"] = round(case["edgesync"]["msgs_per_s"] / b, 4) if b else None
        if transport != "websocket" and ws_rate:
            case["ratio_vs_websocket"] = round(case["edgesync"]["msgs_per_s"] / ws_rate, 4)
        case["setup"] = {**common, **r["setup"]}
        case["transport_wall_s"] = r["transport_wall_s"]
        cases.append(case)
    group_wall = round(time.monotonic() - t, 1)
    for case in cases:
        case["case_wall_s"] = group_wall  # cloud start + joins + every transport + baseline
        case["baseline_wall_s"] = base_wall
    return cases


# ---------------------------------------------------------------- datagram loss


def _run(cmd: list[str], timeout: float = 20.0) -> tuple[bool, str]:
    import subprocess

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    text = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0, text


class LossNamespace:
    """A network namespace whose loopback drops `loss` of the edge-link packets.

    Preferred: iptables `statistic` DROP rules on INPUT for the hub ports only (the
    WebSocket TCP port and the QUIC UDP port, each direction), so joins and the
    operator API stay lossless. Fallback: `tc netem loss` on lo (every loopback packet
    in the namespace, the API included). `setup()` returns None or why neither works.
    """

    def __init__(self, loss: float, ports: dict[str, int]) -> None:
        self.name = f"esbench-{os.getpid()}"
        self.loss = loss
        self.ports = ports
        self.created = False
        self.mechanism: str | None = None
        self.probe: dict[str, str] = {}

    def ns(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def setup(self) -> str | None:
        if os.geteuid() != 0:
            return "needs root (ip netns, iptables or tc)"
        if shutil.which("ip") is None:
            return "no `ip` command (iproute2)"
        ok, text = _run(["ip", "netns", "add", self.name])
        if not ok:
            return f"ip netns add failed: {text}"
        self.created = True
        ok, text = _run(self.ns("ip", "link", "set", "lo", "up"))
        if not ok:
            return f"ip link set lo up (in the namespace) failed: {text}"
        pct = f"{self.loss * 100:g}%"
        if shutil.which("tc") is None:
            self.probe["netem"] = "unavailable: no `tc` command"
        else:
            ok, text = _run(
                self.ns("tc", "qdisc", "add", "dev", "lo", "root", "netem", "loss", pct)
            )
            if ok:
                self.probe["netem"] = "available"
                _run(self.ns("tc", "qdisc", "del", "dev", "lo", "root"))
            else:
                self.probe["netem"] = f"unavailable: {text or 'tc failed'}"
        iptables = shutil.which("iptables")
        if iptables is None:
            self.probe["iptables"] = "unavailable: no `iptables` command (apt-get install iptables)"
        else:
            err = self._iptables_rules()
            if err is None:
                self.probe["iptables"] = "available"
                self.mechanism = "iptables"
                return None
            self.probe["iptables"] = f"unavailable: {err}"
        if self.probe["netem"] == "available":
            ok, text = _run(
                self.ns("tc", "qdisc", "add", "dev", "lo", "root", "netem", "loss", pct)
            )
            if ok:
                self.mechanism = "netem"
                return None
            self.probe["netem"] = f"unavailable: {text}"
        return f"netem: {self.probe['netem']}; iptables: {self.probe['iptables']}"

    def _rules(self) -> list[tuple[str, str, str]]:
        return [
            (proto, flag, str(self.ports[key]))
            for proto, key in (("tcp", "websocket_port"), ("udp", "quic_port"))
            for flag in ("--dport", "--sport")
        ]

    def _iptables_rules(self) -> str | None:
        for proto, flag, port in self._rules():
            match = ["-i", "lo", "-p", proto, flag, port]
            # A counting rule (no target), then the random drop: dropped/seen is checkable.
            ok, text = _run(self.ns("iptables", "-A", "INPUT", *match))
            if ok:
                ok, text = _run(
                    self.ns(
                        "iptables",
                        "-A",
                        "INPUT",
                        *match,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        f"{self.loss:g}",
                        "-j",
                        "DROP",
                    )
                )
            if not ok:
                return text or "iptables failed"
        return None

    def counters(self) -> dict[str, Any]:
        if self.mechanism != "iptables":
            ok, text = _run(self.ns("tc", "-s", "qdisc", "show", "dev", "lo"))
            return {"tc_stats": text if ok else f"tc failed: {text}"}
        ok, text = _run(self.ns("iptables", "-L", "INPUT", "-v", "-n", "-x"))
        if not ok:
            return {"error": text}
        rows = [line.split() for line in text.splitlines()[2:] if line.strip()]
        out: dict[str, Any] = {}
        for proto, flag, port in self._rules():
            key = f"{proto} {flag.strip('-')[0]}pt:{port}"
            hits = [r for r in rows if f"{flag.strip('-')[0]}pt:{port}" in " ".join(r)]
            seen = next((int(r[0]) for r in hits if r[2] != "DROP"), 0)
            dropped = next((int(r[0]) for r in hits if r[2] == "DROP"), 0)
            out[key] = {
                "packets": seen,
                "dropped": dropped,
                "dropped_fraction": round(dropped / seen, 4) if seen else None,
            }
        return out

    def teardown(self) -> None:
        if not self.created:
            return
        ok, text = _run(["ip", "netns", "pids", self.name])
        for pid in (int(p) for p in text.split() if ok and p.isdigit()):
            try:  # only our own children can be in this namespace
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        ok, text = _run(["ip", "netns", "del", self.name])
        if not ok:
            log(f"could not delete network namespace {self.name}: {text}")
        self.created = False


def _child_args(args: argparse.Namespace, n: int, sync: str, transports: list[str]) -> list[str]:
    out = [
        "--netns-child",
        "--nodes", str(n),
        "--synchronous", sync,
        "--transports", ",".join(transports),
        "--duration", str(args.duration),
        "--paced-duration", str(args.paced_duration),
        "--tasks", str(args.tasks),
        "--appliers", str(args.appliers),
        "--handshake-sample", str(args.handshake_sample),
        "--reconnect-sample", str(args.reconnect_sample),
        "--connect-concurrency", str(args.connect_concurrency),
        "--join-concurrency", str(args.join_concurrency),
        "--collect-timeout", str(args.collect_timeout),
    ]  # fmt: skip
    if args.messages_per_node is not None:
        out += ["--messages-per-node", str(args.messages_per_node)]
    if args.hello_labels:
        out.append("--hello-labels")
    return out


def _loss_cases(
    per: dict[str, dict[str, Any]],
    common: dict[str, Any],
    n: int,
    sync: str,
    path: str,
    code: dict[str, Any],
) -> list[dict[str, Any]]:
    cases = []
    for transport, r in per.items():
        case: dict[str, Any] = {
            "nodes": n,
            "sqlite_synchronous": sync,
            "transport": transport,
            "loss_path": path,
            "code": code,
        }
        for key in ("edgesync", "edgesync_paced", "handshake", "reconnect"):
            case[key] = r[key]
        case["setup"] = {**common, **r["setup"]}
        case["transport_wall_s"] = r["transport_wall_s"]
        cases.append(case)
    return cases


async def run_loss_section(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    n = args.loss_nodes
    sync = args.sync_list[0]
    transports = args.transport_list
    pct = f"{args.loss * 100:g}%"
    out: dict[str, Any] = {
        "loss": args.loss,
        "nodes": n,
        "sqlite_synchronous": sync,
        "paths": {
            "udp_proxy": f"QUIC only: edges -> tests/helpers/udp_proxy.UdpProxy (own process) "
            f"-> cloudcore, dropping {pct} of datagrams each way",
            "netns": f"cloudcore, the edges and the driver run in a fresh network namespace "
            f"(`ip netns exec`); {pct} of the packets of the hub's WebSocket TCP port and "
            "QUIC UDP port are dropped each way (iptables statistic DROP on INPUT, so the "
            "sender believes they left; joins and the API are lossless); one cloudcore, "
            "both transports in turn",
        },
        "cases": [],
    }
    t = time.monotonic()
    if "quic" in transports:
        root = base / f"loss-proxy-n{n}"
        root.mkdir(parents=True)
        log(f"=== under {pct} loss: QUIC through UdpProxy, N={n}")
        code = code_version()
        per, _c, _n, _p, common = await run_edgesync(
            n, args, root, sync, None, ["quic"], quic_proxy_loss=args.loss
        )
        out["cases"] += _loss_cases(per, common, n, sync, "udp_proxy", code)
    netns = LossNamespace(args.loss, NETNS_PORTS)
    try:
        why = netns.setup()
        out["netns_probe"] = dict(netns.probe)
        if why is not None:
            out["websocket_under_loss"] = f"unavailable: {why}"
            if "websocket" in transports:
                log(f"WebSocket under loss unavailable: {why}")
        else:
            out["netns_mechanism"] = netns.mechanism
            if netns.mechanism == "netem":
                out["paths"]["netns"] = (
                    f"as above, but with `tc netem loss {pct}` on lo: every loopback packet "
                    "in the namespace, joins and API calls included"
                )
            log(
                f"=== under {pct} loss: {'+'.join(transports)} in netns {netns.name} "
                f"({netns.mechanism}), N={n}"
            )
            cmd = netns.ns(
                sys.executable,
                SCRIPT,
                *_child_args(args, n, sync, transports),
            )
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
            try:
                stdout, _ = await asyncio.wait_for(proc.communicate(), args.netns_timeout)
            except (TimeoutError, asyncio.TimeoutError, asyncio.CancelledError):
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 45)
                except (TimeoutError, asyncio.TimeoutError):
                    proc.kill()
                    await proc.wait()
                raise
            if proc.returncode != 0:
                raise RuntimeError(f"netns child exited with {proc.returncode}")
            child = orjson.loads(stdout)
            out["cases"] += _loss_cases(
                child["per_transport"], child["setup"], n, sync, "netns", child["code"]
            )
            out["netns_counters"] = netns.counters()
            if "websocket" in transports:
                out["websocket_under_loss"] = "measured (loss_path netns)"
    finally:
        netns.teardown()
    out["section_wall_s"] = round(time.monotonic() - t, 1)
    return out


async def netns_child(args: argparse.Namespace) -> dict[str, Any]:
    """Inside the lossy namespace: one cloudcore on fixed ports, each transport in turn."""
    base = Path(tempfile.mkdtemp(prefix="edgesync-bench-netns-"))
    try:
        n = int(args.nodes.split(",")[0])
        code = code_version()
        per, _c, _n, _p, common = await run_edgesync(
            n, args, base / "netns", args.sync_list[0], None, args.transport_list,
            ports=NETNS_PORTS,
        )  # fmt: skip
        return {"per_transport": per, "setup": common, "code": code}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--nodes", default="100,1000", help="comma-separated node counts (default 100,1000)"
    )
    p.add_argument(
        "--transports",
        default="websocket,quic",
        help="edge transports, comma-separated (default websocket,quic); each edgesync case "
        "runs over each, against the same cloudcore process",
    )
    p.add_argument(
        "--messages-per-node",
        type=int,
        default=None,
        help="applies (= messages per node) in the max and paced phases; default: "
        "as many as fit in --duration (max) / --paced-duration (paced)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of applying in the max phase (default 5, quick 1.5)",
    )
    p.add_argument(
        "--paced-duration",
        type=float,
        default=None,
        help="seconds of the paced phase (default 5, quick 2)",
    )
    p.add_argument("--tasks", type=int, default=4, help="tasks matching every node (K, default 4)")
    p.add_argument(
        "--appliers",
        type=int,
        default=1,
        help="concurrent apply calls in the max phase (default 1: t0 is then exactly the "
        "return of the call whose transaction wrote the rows)",
    )
    p.add_argument(
        "--synchronous",
        default=None,
        help="cloudcore sqlite_synchronous value(s), comma-separated (default NORMAL,FULL; "
        "quick: NORMAL). cloudcore's own default is FULL",
    )
    p.add_argument(
        "--baseline-seconds",
        type=float,
        default=None,
        help="target length of the baseline's steady max run (default 3, quick 1)",
    )
    p.add_argument(
        "--handshake-sample",
        type=int,
        default=None,
        help="edges whose first connect is timed, one at a time (default 50, quick 10)",
    )
    p.add_argument(
        "--reconnect-sample",
        type=int,
        default=None,
        help="edges broken and resumed one at a time (default 20, quick 5)",
    )
    p.add_argument(
        "--loss",
        type=float,
        default=0.05,
        help="datagram/packet loss of the under-loss section (default 0.05; 0 skips it)",
    )
    p.add_argument(
        "--loss-nodes",
        type=int,
        default=None,
        help="N of the under-loss section (default 100, quick 20)",
    )
    p.add_argument(
        "--netns-timeout",
        type=float,
        default=420.0,
        help="longest run of the in-namespace part of the loss section (s)",
    )
    p.add_argument("--quick", action="store_true", help="small smoke run (< 90 s)")
    p.add_argument("--json-out", help="also write the JSON document to this file")
    p.add_argument(
        "--profile",
        help="run cloudcore under cProfile (per thread); write profiles to this dir "
        "(numbers are then distorted; the sampler covers the first transport's phases)",
    )
    p.add_argument(
        "--hello-labels",
        action="store_true",
        help="edges send labels in their first hello (each connect then re-runs the scheduler)",
    )
    p.add_argument("--skip-baseline", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--netns-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--join-concurrency", type=int, default=16)
    p.add_argument("--connect-concurrency", type=int, default=64)
    p.add_argument(
        "--collect-timeout",
        type=float,
        default=120.0,
        help="longest wait for the edges to ack a phase's last messages (s)",
    )
    args = p.parse_args(argv)
    given = argv if argv is not None else sys.argv
    if args.quick:
        args.nodes = args.nodes if "--nodes" in given else "20,100"
        args.duration = args.duration if args.duration is not None else 1.5
        args.paced_duration = args.paced_duration if args.paced_duration is not None else 2.0
        args.collect_timeout = min(args.collect_timeout, 30.0)
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    if args.synchronous is None:
        args.synchronous = "NORMAL" if args.quick else "NORMAL,FULL"
    if args.baseline_seconds is None:
        args.baseline_seconds = 1.0 if args.quick else 3.0
    if args.handshake_sample is None:
        args.handshake_sample = 10 if args.quick else 50
    if args.reconnect_sample is None:
        args.reconnect_sample = 5 if args.quick else 20
    if args.loss_nodes is None:
        args.loss_nodes = 20 if args.quick else 100
    args.duration = 5.0 if args.duration is None else args.duration
    args.paced_duration = 5.0 if args.paced_duration is None else args.paced_duration
    args.transport_list = [t.strip().lower() for t in args.transports.split(",") if t.strip()]
    for t in args.transport_list:
        if t not in TRANSPORTS:
            p.error(f"unknown transport {t!r} (choose from {', '.join(TRANSPORTS)})")
    if not args.transport_list:
        p.error("--transports is empty")
    args.sync_list = [s.strip().upper() for s in args.synchronous.split(",") if s.strip()]
    return args


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    nodes = [int(x) for x in args.nodes.split(",") if x.strip()]
    syncs = args.sync_list
    base = Path(tempfile.mkdtemp(prefix="edgesync-bench-"))
    t = time.monotonic()
    tickets = quic_takes_tickets()
    doc: dict[str, Any] = {
        "benchmark": "edgesync cloud->edge dispatch over WebSocket and QUIC vs bare websockets",
        "machine": machine_info(),
        "code": code_version(),
        "config": {
            "transports": args.transport_list,
            "sqlite_synchronous": syncs,
            "sqlite_synchronous_default": "FULL",
            "tasks_per_node": args.tasks,
            "max_phase_appliers": args.appliers,
            "window": WINDOW,
            "transport": {
                "websocket": "wss, mutual TLS (EC P-256 certs from the cloud CA), compression "
                "off; edges use edgecore.link.websocket.connect_websocket",
                "quic": "QUIC (aioquic), mutual TLS 1.3, ALPN edgesync/1, one bidirectional "
                "stream of length-prefixed frames; edges use edgecore.link.quic.connect_quic"
                + (" with one TLS session-ticket cache per edge" if tickets else ""),
                "baseline": "bare websockets over wss (the baseline is WebSocket only)",
            },
            "quic_session_tickets": tickets,
            "cases": "one cloudcore per (N, synchronous): nodes join once, then each transport "
            "in turn (a fresh edge process; the previous transport's edges closed first), "
            "then the baseline",
            "database": "SQLite (cloudcore default URL), WAL",
            "duration_s": args.duration,
            "paced_duration_s": args.paced_duration,
            "baseline_seconds": args.baseline_seconds,
            "messages_per_node": args.messages_per_node,
            "handshake_sample": args.handshake_sample,
            "reconnect_sample": args.reconnect_sample,
            "quick": args.quick,
            "profiled": bool(args.profile),
            "latency": {
                "edgesync": "t0 = POST /api/v1/tasks returned (rows committed); t1 = edge acked",
                "edgesync_paced": "same, applies paced at half the measured max msgs/s",
                "baseline": "t0 = message handed to websockets send(); t1 = client acked; "
                "a steady run of ~baseline_seconds (the same count as edgesync's max phase "
                "is reported as baseline_same_count)",
                "baseline_paced": "t0 = round released at the same rounds/s; t1 = client acked",
                "handshake": "first connects of the first handshake_sample edges, one at a "
                "time before the others connect: p50/p99 of connect start -> welcome "
                "received (failed attempts included); link_* = connect start -> transport "
                "ready (TCP+TLS+HTTP upgrade | QUIC+TLS handshake); hello_to_welcome_* = hello "
                "sent -> welcome received (cloud checks the node, records the session)",
                "reconnect": "reconnect_sample edges, one at a time, after the paced phase: "
                "the edge settles, its link is broken abruptly, the driver applies a task "
                "(committed while the link is down), then the edge reconnects with a new "
                "session whose hello carries its cursor. p50/p99 = reconnect start -> that "
                "applied generation received on the resumed session; break_to_resumed_* adds "
                "the down time (the apply call, ~down_*)",
                "clock": "time.monotonic() in every process (CLOCK_MONOTONIC, system-wide)",
            },
            "throughput": "acked messages / (last ack - first apply request | first send)",
        },
        "cases": [],
    }
    try:
        for synchronous in syncs:
            for n in nodes:
                log(f"=== case N={n} sqlite_synchronous={synchronous}")
                doc["cases"].extend(await run_case(n, args, synchronous, base))
        if args.loss > 0:
            doc["under_loss"] = await run_loss_section(args, base)
        else:
            doc["under_loss"] = "skipped (--loss 0)"
    finally:
        doc["total_wall_s"] = round(time.monotonic() - t, 1)
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return doc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    doc = asyncio.run(netns_child(args) if args.netns_child else amain(args))
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
