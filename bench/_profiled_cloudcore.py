"""Run `python -m cloudcore ARGS` under cProfile (per thread) and a stack sampler.

`python -m cProfile -m cloudcore` profiles only the main thread, but
cloudcore does its SQL on a dedicated DB thread (shared/aio/dbthread.py), so
this wrapper also profiles every thread started after it (the executor's
worker threads included) and writes one .prof file per thread plus a text
summary when cloudcore exits (SIGTERM makes cloudcore exit cleanly).

    python bench/_profiled_cloudcore.py OUT_PREFIX -- --config cfg.yaml --data-dir DIR

cProfile covers the whole run (startup, joins, connects included). The
sampler covers only the window between SIGUSR1 and SIGUSR2 (the benchmark
sends them around its measured phases): every 2 ms it records each thread's
stack via sys._current_frames() and writes OUT_PREFIX.sample.txt with, per
thread, the share of samples in which each function is on the stack
(inclusive) and at the top (self). Idle shows up as epoll (event loop) and
SimpleQueue.get (DB thread waiting for work).
"""

from __future__ import annotations

import collections
import cProfile
import io
import pstats
import runpy
import signal
import sys
import threading
import time
from types import FrameType


class Sampler:
    def __init__(self, prefix: str, interval: float = 0.002) -> None:
        self.prefix = prefix
        self.interval = interval
        self.running = threading.Event()
        self.samples: collections.Counter[int] = collections.Counter()
        self.incl: dict[int, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.self_: dict[int, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.names: dict[int, str] = {}
        self.started = 0.0
        self.thread: threading.Thread | None = None

    def start(self, *_: object) -> None:
        if self.thread is not None:
            return
        self.started = time.monotonic()
        self.running.set()
        self.thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.thread._bench_skip = True  # type: ignore[attr-defined]
        self.thread.start()

    def stop(self, *_: object) -> None:
        if self.thread is None:
            return
        self.running.clear()
        self.thread.join(2)
        self.thread = None
        self.dump()

    @staticmethod
    def _label(frame: FrameType) -> str:
        code = frame.f_code
        path = code.co_filename
        for marker in ("/site-packages/", "/lib/python3", "/work/main/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        return f"{path}:{code.co_name}"

    def _run(self) -> None:
        me = threading.get_ident()
        while self.running.is_set():
            for t in threading.enumerate():
                self.names.setdefault(t.ident or 0, t.name)
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                self.samples[ident] += 1
                seen = set()
                top = True
                f: FrameType | None = frame
                while f is not None:
                    label = self._label(f)
                    if top:
                        self.self_[ident][label] += 1
                        top = False
                    if label not in seen:
                        seen.add(label)
                        self.incl[ident][label] += 1
                    f = f.f_back
            time.sleep(self.interval)

    def dump(self) -> None:
        out = io.StringIO()
        wall = time.monotonic() - self.started
        out.write(f"sampling window {wall:.1f}s, interval {self.interval * 1000:.0f} ms\n")
        for ident, total in self.samples.most_common():
            if total < 20:
                continue
            out.write(f"\n===== thread {self.names.get(ident, ident)}: {total} samples\n")
            out.write("-- inclusive (on stack) --\n")
            for label, count in self.incl[ident].most_common(45):
                out.write(f"{100.0 * count / total:6.1f}%  {label}\n")
            out.write("-- self (top of stack) --\n")
            for label, count in self.self_[ident].most_common(25):
                out.write(f"{100.0 * count / total:6.1f}%  {label}\n")
        with open(f"{self.prefix}.sample.txt", "w") as fh:
            fh.write(out.getvalue())


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.exit("usage: _profiled_cloudcore.py OUT_PREFIX -- CLOUDCORE_ARGS...")
    prefix = sys.argv[1]
    sys.argv = ["cloudcore", *sys.argv[3:]]
    profiles: list[tuple[str, cProfile.Profile, list[float]]] = []
    lock = threading.Lock()
    original_run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        if getattr(self, "_bench_skip", False):
            original_run(self)
            return
        prof = cProfile.Profile()
        cpu = [time.thread_time()]
        with lock:
            profiles.append((self.name, prof, cpu))
        prof.enable()
        try:
            original_run(self)
        finally:
            prof.disable()
            cpu.append(time.thread_time())

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    sampler = Sampler(prefix)
    signal.signal(signal.SIGUSR1, sampler.start)
    signal.signal(signal.SIGUSR2, sampler.stop)
    main_prof = cProfile.Profile()
    main_cpu = [time.thread_time()]
    main_prof.enable()
    try:
        runpy.run_module("cloudcore", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        main_prof.disable()
        main_cpu.append(time.thread_time())
        sampler.stop()
        summary = io.StringIO()
        for name, prof, cpu in [("MainThread", main_prof, main_cpu), *profiles]:
            if len(cpu) < 2:
                continue
            safe = name.replace("/", "_").replace(" ", "_")
            prof.dump_stats(f"{prefix}.{safe}.prof")
            stats = pstats.Stats(prof)
            total = getattr(stats, "total_tt", 0.0)
            if total < 0.05:
                continue
            summary.write(
                f"===== thread {name}: cpu {cpu[1] - cpu[0]:.2f}s, profiled {total:.2f}s\n"
            )
            for key in ("tottime", "cumulative"):
                stats.stream = summary  # type: ignore[attr-defined]
                stats.sort_stats(key).print_stats(30)
        with open(f"{prefix}.txt", "w") as fh:
            fh.write(summary.getvalue())


if __name__ == "__main__":
    main()
