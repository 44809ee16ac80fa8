"""A local fleet of real daemons (one cloudcore, N edgecores) as child processes.

Used by the demo (`make demo`) and the end-to-end tests: every process is
the real entry point on real loopback sockets, real TLS and real SQLite.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from cloudcore.edgectl import Client


class FleetError(Exception):
    pass


@dataclass
class Daemon:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush; what a power cut or the OOM killer does."""
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill()
            code = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class LocalFleet:
    """Start, join, stop and inspect a fleet living under `root`."""

    def __init__(
        self,
        root: Path,
        cloud_config: dict[str, Any] | None = None,
        edge_config: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.cloud_dir = root / "cloud"
        self.cloud_config = {
            "hub": {
                "websocket_port": 0,
                "quic_port": 0,
                "listen": "127.0.0.1",
                "ping_interval": 5.0,
            },
            "api": {"port": 0, "listen": "127.0.0.1"},
            **(cloud_config or {}),
        }
        # A local fleet's tasks run as whoever runs the fleet (edgecore's `nobody`
        # default for root could not reach this machine's Python under /root, say).
        edge = dict(edge_config or {})
        edge["runtime"] = {"run_as": pwd.getpwuid(os.geteuid()).pw_name, **edge.get("runtime", {})}
        self.edge_config = edge
        self.cloud: Daemon | None = None
        self.edges: dict[str, Daemon] = {}
        self._client: Client | None = None

    # ------------------------------------------------------------------ cloud

    def start_cloud(self, timeout: float = 30.0, env: dict[str, str] | None = None) -> None:
        """Start cloudcore; a restart reuses the ports of the first start (edges know them)."""
        if (self.cloud_dir / "cloudcore.json").exists():
            ports = self.runtime
            self.cloud_config["hub"] = {
                **self.cloud_config.get("hub", {}),
                "websocket_port": ports["websocket_port"],
                "quic_port": ports["quic_port"] if ports["quic_port"] is not None else -1,
            }
            self.cloud_config["api"] = {
                **self.cloud_config.get("api", {}),
                "port": ports["api_port"],
            }
        config_path = self.root / "cloudcore.yaml"
        config_path.write_text(yaml.safe_dump(self.cloud_config))
        runtime = self.cloud_dir / "cloudcore.json"
        if runtime.exists():
            runtime.unlink()
        self.cloud = Daemon(
            "cloudcore",
            _python("cloudcore", "--config", str(config_path), "--data-dir", str(self.cloud_dir)),
            self.root / "cloudcore.log",
            env=env or {},
        )
        self.cloud.start()
        self._wait_for(runtime.exists, timeout, "cloudcore to start", self.cloud)
        self._client = None

    @property
    def runtime(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.cloud_dir / "cloudcore.json").read_text())
        return data

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.cloud_dir / "edgectl.yaml")
        return self._client

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self.client.call(method, path, body)

    # ------------------------------------------------------------------ edges

    def edge_dir(self, name: str) -> Path:
        return self.root / "edges" / name

    def join(
        self, name: str, labels: dict[str, str] | None = None, cloud_url: str | None = None
    ) -> None:
        # Placement labels are the operator's: they go with the token. The edge reports
        # the same ones about itself (shown as reported_labels).
        grant = {"node": name, "labels": dict(labels or {})}
        token = self.api("POST", "/api/v1/tokens", grant)["token"]
        argv = _python(
            "edgecore",
            "join",
            "--cloud",
            cloud_url or self.runtime["api"],
            "--token",
            token,
            "--data-dir",
            str(self.edge_dir(name)),
        )
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise FleetError(f"edgecore join {name} failed: {result.stderr.strip()}")
        if self.edge_config:
            path = self.edge_dir(name) / "edgecore.yaml"
            config = yaml.safe_load(path.read_text())
            for key, value in self.edge_config.items():
                if isinstance(value, dict):
                    config.setdefault(key, {}).update(value)
                else:
                    config[key] = value
            path.write_text(yaml.safe_dump(config))

    def set_edge_url(
        self, name: str, websocket_url: str | None = None, quic_url: str | None = None
    ) -> None:
        """Point an edge at another address (a proxy in tests)."""
        path = self.edge_dir(name) / "edgecore.yaml"
        config = yaml.safe_load(path.read_text())
        if websocket_url is not None:
            config["cloud"]["websocket_url"] = websocket_url
        if quic_url is not None:
            config["cloud"]["quic_url"] = quic_url
        path.write_text(yaml.safe_dump(config))

    def start_edge(self, name: str, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(
            name,
            _python("edgecore", "serve", "--data-dir", str(self.edge_dir(name))),
            self.root / f"{name}.log",
            env=env or {},
        )
        daemon.start()
        self.edges[name] = daemon
        return daemon

    # ------------------------------------------------------------------ state

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in self.api("GET", "/api/v1/nodes")["items"]}

    def task(self, name: str, namespace: str = "default") -> dict[str, Any]:
        result: dict[str, Any] = self.api("GET", f"/api/v1/tasks/{namespace}/{name}")
        return result

    def wait_until(self, predicate: Any, timeout: float, what: str) -> None:
        self._wait_for(predicate, timeout, what, None)

    def _wait_for(self, predicate: Any, timeout: float, what: str, daemon: Daemon | None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (OSError, ValueError, KeyError):
                pass
            except Exception as exc:
                if type(exc).__name__ != "CtlError":
                    raise
            if daemon is not None and not daemon.running:
                raise FleetError(
                    f"{daemon.name} exited while waiting for {what}:\n{daemon.log_text()[-3000:]}"
                )
            time.sleep(0.1)
        raise FleetError(f"timed out after {timeout:g}s waiting for {what}")

    def stop_all(self) -> dict[str, int | None]:
        codes = {name: edge.stop() for name, edge in self.edges.items()}
        if self.cloud is not None:
            codes["cloudcore"] = self.cloud.stop()
        return codes
