#!/usr/bin/env python
"""Cloud→edge dispatch: a real cloudcore against a bare websockets baseline, same run.

Per case (N nodes):

edgesync
    A real `cloudcore` child process (SQLite, `sqlite_synchronous` as given,
    default NORMAL here; cloudcore's own default is FULL). N nodes join
    through the real join API (token + CSR, in parallel). A second child
    process holds N real wss connections with mutual TLS, each driven by the
    real sans-I/O `Session(Role.EDGE)`: hello, welcome, then a cumulative ack
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
from shared.resources import parse_task  # noqa: E402

WINDOW = 256  # cloudcore's hub.window default; the baseline server uses the same
MAX_FRAME = (1 << 20) + 65536
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


def canonical_document(k: int, stamp: int) -> dict[str, Any]:
    """What the cloud stores and sends for that document (used for the baseline's size)."""
    return parse_task(task_document(k, stamp, {})).to_document()


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


class CpuMeter:
    """CPU share (% of one core) of some processes between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = time.monotonic()
        self._start = {name: process_ticks(pid) for name, pid in pids.items()}

    def stop(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self._t0, 1e-6)
        out: dict[str, Any] = {}
        for name, pid in self.pids.items():
            end = process_ticks(pid)
            start = self._start[name]
            out[name] = {
                key: max(0.0, round(100.0 * (end[key] - start[key]) / CLK_TCK / wall, 1))
                for key in end
            }
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
    """Speaks the real protocol through shared.protocol.session.Session(Role.EDGE)."""

    async def hello(self) -> None:
        from shared.protocol.session import Session, SessionConfig
        from shared.protocol.states import Role

        self.session = Session(
            Role.EDGE, SessionConfig(), time.monotonic(), time.time_ns() // 1_000_000
        )
        self.session.send_hello(
            0,
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
        for frame in self.session.data_to_send():
            await self.ws.send(frame, text=True)

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
                self.pending.append((env.res or "", gen, now, env.rv or 0, math.nan))
                if self.worker.msg_bytes == 0:
                    self.worker.msg_bytes = len(frame)
            elif type(event) is WelcomeReceived:
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
            for frame in frames:
                await self.ws.send(frame, text=True)
        except Exception as exc:
            self.lost(f"send failed: {exc}")

    async def ack(self, top: int, now: float) -> None:
        self.session.ack(top, now)
        await self.flush()

    def tick(self, now: float) -> None:
        self.session.handle_timer(now)
        out = self.session.data_to_send()
        if out:
            self._spawn_send(out)


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

    async def _connect_all(self, url: str, concurrency: int) -> dict[str, Any]:
        from edgecore.link.websocket import client_context

        cls = EdgesyncConn if self.spec["mode"] == "edgesync" else BaselineConn
        certs = Path(self.spec["cert_dir"])
        ca = certs / "ca.crt"
        self.conns = [
            cls(self, i, name, client_context(certs / f"{name}.crt", certs / f"{name}.key", ca))
            for i, name in enumerate(self.spec["nodes"])
        ]
        sem = asyncio.Semaphore(concurrency)
        failures: list[str] = []
        failed_per_attempt: list[int] = []

        async def one(conn: SimConn) -> bool:
            async with sem:
                try:
                    await conn.open(url)
                    return True
                except Exception as exc:
                    failures.append(f"{conn.name}: {type(exc).__name__}: {exc}")
                    return False

        t0 = time.monotonic()
        todo = list(self.conns)
        for _attempt in range(self.spec.get("connect_attempts", 12)):
            ok = await asyncio.gather(*(one(c) for c in todo))
            todo = [c for c, good in zip(todo, ok, strict=True) if not good]
            failed_per_attempt.append(len(todo))
            if not todo:
                break
        open_ = sum(1 for c in self.conns if c.closed is None and c.welcomed.is_set())
        return {
            "connect_s": round(time.monotonic() - t0, 3),
            "open": open_,
            "failed_per_attempt": failed_per_attempt,
            "failures": failures[:5],
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
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
    def __init__(self, root: Path, synchronous: str, profile_prefix: Path | None) -> None:
        self.root = root
        self.data_dir = root / "cloud"
        config = {
            "sqlite_synchronous": synchronous,
            "log_level": "INFO",
            "hub": {"websocket_port": 0, "listen": "127.0.0.1"},
            "api": {"port": 0, "listen": "127.0.0.1"},
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

    def stop(self) -> None:
        self.daemon.stop(30)


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


async def run_edgesync(
    n: int,
    args: argparse.Namespace,
    root: Path,
    synchronous: str,
    profile_prefix: Path | None,
) -> tuple[dict[str, Any], Path, list[str], dict[str, Any]]:
    cert_dir = root / "nodes"
    cert_dir.mkdir(parents=True)
    names = [f"n{i:05d}" for i in range(n)]
    cloud = CloudProcess(root, synchronous, profile_prefix)
    worker: Child | None = None
    api: Api | None = None
    result: dict[str, Any] = {}
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
        for k in range(k_tasks):
            await applier.apply(k)
        setup["create_tasks_s"] = round(time.monotonic() - t, 2)
        log(
            f"edgesync N={n}: {n} joins in {setup['join_s']}s, {k_tasks} tasks created in "
            f"{setup['create_tasks_s']}s; connecting edges"
        )

        # Labels in the hello differ from the join's empty ones only with --hello-labels: then
        # every first connect re-runs the scheduler (see README: connect storm).
        labels = {"bench": "yes"} if args.hello_labels else {}
        worker = Child(
            "edge-sim",
            edge_worker_entry,
            {"mode": "edgesync", "nodes": names, "cert_dir": str(cert_dir), "labels": labels},
        )
        url = f"wss://127.0.0.1:{info['websocket_port']}/edgesync/v1"
        worker.send("connect", url, args.connect_concurrency)
        ready = (await worker.reply(300))[1]
        t_connected = time.monotonic()
        setup["connect"] = ready
        log(f"edgesync N={n}: {ready['open']}/{n} sessions open in {ready['connect_s']}s")
        if ready["open"] != n:
            raise RuntimeError(
                f"only {ready['open']}/{n} edge sessions opened: {ready['failures']}"
            )

        pids = {"cloudcore": cloud.pid, "edge_sim": worker.pid, "driver": os.getpid()}

        async def collect(expected: dict[str, int], what: str) -> dict[str, Any]:
            assert worker is not None
            worker.send("collect", expected, args.collect_timeout)
            got = (await worker.reply(args.collect_timeout + 60))[1]
            if not got["complete"]:
                log(f"edgesync N={n} {what}: INCOMPLETE {got['satisfied']}/{got['target']}")
            if got["error_count"]:
                log(f"edgesync N={n} {what}: {got['error_count']} errors: {got['errors'][:3]}")
            result: dict[str, Any] = got
            return result

        expected = {f"{RES_PREFIX}bench-{k}": 1 for k in range(k_tasks)}
        warm = await collect(expected, "catch-up")
        setup["catchup_after_connect_s"] = round(time.monotonic() - t_connected, 2)
        setup["msg_bytes"] = warm["msg_bytes"]
        log(
            f"edgesync N={n}: catch-up of {len(warm['records'])} msgs done "
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
        duration = args.duration
        count = 0
        stop_at = time.monotonic() + duration
        first_req: list[float] = []
        last_gen: dict[str, int] = dict(expected)
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
                last_gen[f"{RES_PREFIX}bench-{k}"] = max(gen, last_gen[f"{RES_PREFIX}bench-{k}"])

        if profile_prefix is not None:
            cloud.daemon.signal(signal.SIGUSR1)  # start the stack sampler
        meter = CpuMeter(pids)
        t_phase = time.monotonic()
        await asyncio.gather(*(apply_loop(k) for k in range(min(args.appliers, k_tasks))))
        t_applied = time.monotonic()
        got = await collect(last_gen, "max")
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
            }
        )
        result["edgesync"] = stats
        log(
            f"edgesync N={n} max: {stats['messages']} msgs, {stats['msgs_per_s']} msg/s, "
            f"p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms; cpu {cpu}"
        )

        # ---- paced phase at half the measured max rate.
        rate_msgs = stats["msgs_per_s"] / 2.0
        applies_per_s = max(rate_msgs / n, 0.01)
        if args.messages_per_node is not None:
            paced_applies = args.messages_per_node
        else:
            paced_applies = max(2, int(applies_per_s * args.paced_duration))
        meter = CpuMeter(pids)
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
            last_gen[f"{RES_PREFIX}bench-{k}"] = gen
        t_applied = time.monotonic()
        got = await collect(last_gen, "paced")
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
            }
        )
        result["edgesync_paced"] = paced
        if profile_prefix is not None:
            cloud.daemon.signal(signal.SIGUSR2)  # stop the sampler, write .sample.txt
        log(
            f"edgesync N={n} paced @{paced['target_msgs_per_s']} msg/s: {paced['messages']} msgs, "
            f"p50 {paced['p50_ms']} ms, p99 {paced['p99_ms']} ms"
        )
        plan = {"max_rounds": applies, "paced_rounds": paced_applies, "paced_rate": applies_per_s}
        return result | {"setup": setup}, cert_dir, names, plan
    finally:
        if worker is not None:
            worker.stop()
        if api is not None:
            await api.close()
        cloud.stop()
        if profile_prefix is not None:
            log(f"profile summary: {profile_prefix}.txt")


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
    return {
        "sha256_cloudcore_shared": digest.hexdigest()[:16],
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
) -> dict[str, Any]:
    root = base / f"n{n}-{synchronous.lower()}"
    t = time.monotonic()
    profile_prefix = (
        (Path(args.profile) / f"cloud-n{n}-{synchronous.lower()}") if args.profile else None
    )
    _make_dirs(root, profile_prefix.parent if profile_prefix is not None else None)
    code_at_start = code_version()  # the tree is edited concurrently: hash what this case ran
    es, cert_dir, names, plan = await run_edgesync(n, args, root, synchronous, profile_prefix)
    case: dict[str, Any] = {"nodes": n, "sqlite_synchronous": synchronous, "code": code_at_start}
    case.update({k: es[k] for k in ("edgesync", "edgesync_paced")})
    if not args.skip_baseline:
        base_out = await run_baseline(n, args, cert_dir, root / "cloud" / "pki", names, plan)
        case.update(base_out)
        b = case["baseline"]["msgs_per_s"]
        case["ratio"] = round(case["edgesync"]["msgs_per_s"] / b, 4) if b else None
    case["setup"] = es["setup"]
    case["case_wall_s"] = round(time.monotonic() - t, 1)
    return case


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--nodes", default="100,1000", help="comma-separated node counts (default 100,1000)"
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
        help="seconds of applying in the max phase (default 6, quick 1.5)",
    )
    p.add_argument(
        "--paced-duration",
        type=float,
        default=None,
        help="seconds of the paced phase (default 6, quick 2)",
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
    p.add_argument("--quick", action="store_true", help="small smoke run (< 60 s)")
    p.add_argument("--json-out", help="also write the JSON document to this file")
    p.add_argument(
        "--profile",
        help="run cloudcore under cProfile (per thread); write profiles to this dir "
        "(numbers are then distorted)",
    )
    p.add_argument(
        "--hello-labels",
        action="store_true",
        help="edges send labels in their first hello (each connect then re-runs the scheduler)",
    )
    p.add_argument("--skip-baseline", action="store_true", help=argparse.SUPPRESS)
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
    if args.quick:
        args.nodes = args.nodes if "--nodes" in (argv or sys.argv) else "20,100"
        args.duration = args.duration if args.duration is not None else 1.5
        args.paced_duration = args.paced_duration if args.paced_duration is not None else 2.0
        args.collect_timeout = min(args.collect_timeout, 30.0)
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    if args.synchronous is None:
        args.synchronous = "NORMAL" if args.quick else "NORMAL,FULL"
    if args.baseline_seconds is None:
        args.baseline_seconds = 1.0 if args.quick else 3.0
    args.duration = 6.0 if args.duration is None else args.duration
    args.paced_duration = 6.0 if args.paced_duration is None else args.paced_duration
    return args


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    nodes = [int(x) for x in args.nodes.split(",") if x.strip()]
    syncs = [s.strip().upper() for s in args.synchronous.split(",") if s.strip()]
    base = Path(tempfile.mkdtemp(prefix="edgesync-bench-"))
    t = time.monotonic()
    doc: dict[str, Any] = {
        "benchmark": "edgesync cloud->edge dispatch vs bare websockets",
        "machine": machine_info(),
        "code": code_version(),
        "config": {
            "sqlite_synchronous": syncs,
            "sqlite_synchronous_default": "FULL",
            "tasks_per_node": args.tasks,
            "max_phase_appliers": args.appliers,
            "window": WINDOW,
            "transport": "wss, mutual TLS (EC P-256 certs from the cloud CA), compression off",
            "database": "SQLite (cloudcore default URL), WAL",
            "duration_s": args.duration,
            "paced_duration_s": args.paced_duration,
            "baseline_seconds": args.baseline_seconds,
            "messages_per_node": args.messages_per_node,
            "quick": args.quick,
            "profiled": bool(args.profile),
            "latency": {
                "edgesync": "t0 = POST /api/v1/tasks returned (rows committed); t1 = edge acked",
                "edgesync_paced": "same, applies paced at half the measured max msgs/s",
                "baseline": "t0 = message handed to websockets send(); t1 = client acked; "
                "a steady run of ~baseline_seconds (the same count as edgesync's max phase "
                "is reported as baseline_same_count)",
                "baseline_paced": "t0 = round released at the same rounds/s; t1 = client acked",
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
                doc["cases"].append(await run_case(n, args, synchronous, base))
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
    doc = asyncio.run(amain(args))
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
