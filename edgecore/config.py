"""edgecore configuration (see `edgecore --print-default-config`).

`edgecore join` writes a complete config file into the data dir; operators
edit it (labels, limits) and `edgecore serve` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.backoff import BackoffPolicy
from shared.config import from_dict, load_yaml_file, section, setting
from shared.protocol.codec import Limits
from shared.protocol.session import SessionConfig


@dataclass(frozen=True)
class CloudEndpoint:
    websocket_url: str = setting("", "wss://HOST:10000/edgesync/v1 (written by `edgecore join`)")
    api_url: str = setting("", "https://HOST:10002 (written by `edgecore join`)")
    quic_url: str = setting("", "quic://HOST:10001 (written by `edgecore join`; empty: no QUIC)")


@dataclass(frozen=True)
class LinkConfig:
    transport: str = setting(
        "auto", "websocket, quic, or auto (QUIC, falling back to WebSocket when UDP is blocked)"
    )
    quic_probe_timeout: float = setting(3.0, "auto: seconds to wait for a QUIC handshake")
    auto_remember: float = setting(600.0, "auto: seconds to stay on WebSocket after QUIC failed")
    connect_timeout: float = setting(10.0, "seconds to establish TLS and the WebSocket")
    backoff_initial: float = setting(0.5, "first reconnect delay bound, seconds")
    backoff_cap: float = setting(30.0, "longest reconnect delay, seconds (full jitter below it)")
    window: int = setting(256, "outbox messages in flight before acks")
    ping_interval: float = setting(15.0, "seconds between pings to the cloud")
    missed_pings: int = setting(3, "pings missed before the link is declared dead")
    max_frame_bytes: int = setting(1 << 20, "largest protocol frame accepted, bytes")

    def session_config(self) -> SessionConfig:
        return SessionConfig(
            window=self.window,
            ping_interval=self.ping_interval,
            missed_pings=self.missed_pings,
            handshake_timeout=self.connect_timeout,
            limits=Limits(max_frame_bytes=self.max_frame_bytes),
        )

    def backoff_policy(self) -> BackoffPolicy:
        return BackoffPolicy(initial=self.backoff_initial, cap=self.backoff_cap)


@dataclass(frozen=True)
class RuntimeConfig:
    max_concurrent: int = setting(0, "task runs at once; 0 means the number of CPUs")
    output_tail_bytes: int = setting(4096, "bytes of stdout and of stderr kept per run")
    kill_grace: float = setting(2.0, "seconds between SIGTERM and SIGKILL on timeout or stop")


@dataclass(frozen=True)
class EdgeConfig:
    data_dir: str = setting("/var/lib/edgesync/edge", "keys, certificates and the SQLite store")
    labels: dict[str, str] = setting({}, "labels reported to the cloud, used by task selectors")
    outbox_max_rows: int = setting(
        100_000, "outbox bound; above it the oldest status rows are dropped, never results"
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    cloud: CloudEndpoint = section(CloudEndpoint, "where the cloud is")
    link: LinkConfig = section(LinkConfig, "the connection to the cloud")
    runtime: RuntimeConfig = section(RuntimeConfig, "task execution")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


CONFIG_NAME = "edgecore.yaml"


def load_edge_config(path: Path | None, data_dir: str | None = None) -> EdgeConfig:
    """Load `path`, or `DATA_DIR/edgecore.yaml` when only a data dir is given."""
    if path is None and data_dir is not None and (Path(data_dir) / CONFIG_NAME).exists():
        path = Path(data_dir) / CONFIG_NAME
    raw = load_yaml_file(path) if path else {}
    if data_dir is not None:
        raw = {**raw, "data_dir": data_dir}
    return from_dict(EdgeConfig, raw, str(path) if path else "<defaults>")
