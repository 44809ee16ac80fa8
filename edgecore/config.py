"""edgecore configuration (see `edgecore --print-default-config`).

`edgecore join` writes a complete config file into the data dir; operators
edit it (labels, limits) and `edgecore serve` reads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.backoff import BackoffPolicy
from shared.config import (
    ENV_NAME,
    FRAME_BYTES,
    LOG_LEVEL,
    MISSED_PINGS,
    POSITIVE_SECONDS,
    WINDOW,
    Check,
    each,
    from_dict,
    in_range,
    load_yaml_file,
    non_empty,
    one_of,
    section,
    setting,
    url,
)
from shared.files import USABLE_DIR
from shared.protocol.codec import Limits
from shared.protocol.session import SessionConfig

USER_NAME = Check(
    "empty, a user name or a numeric uid",
    lambda v: (
        None
        if re.fullmatch(r"|[A-Za-z_][A-Za-z0-9_.-]{0,31}|[0-9]{1,10}", v)
        else f"{v!r} is not a user name"
    ),
)
RESULT_OVERHEAD_BYTES = 16 * 1024
"""Room in a result frame for the envelope and every field but the two output tails."""
ESCAPED_BYTES_PER_OUTPUT_BYTE = 6
"""Worst case of JSON-encoding a byte of output (a control byte becomes \\u0001)."""


@dataclass(frozen=True)
class CloudEndpoint:
    websocket_url: str = setting(
        "", "wss://HOST:10000/edgesync/v1 (written by `edgecore join`)", check=url("wss")
    )
    api_url: str = setting(
        "", "https://HOST:10002 (written by `edgecore join`)", check=url("https")
    )
    quic_url: str = setting(
        "", "quic://HOST:10001 (written by `edgecore join`; empty: no QUIC)", check=url("quic")
    )


@dataclass(frozen=True)
class LinkConfig:
    transport: str = setting(
        "auto",
        "websocket, quic, or auto (QUIC, falling back to WebSocket when UDP is blocked)",
        check=one_of("websocket", "quic", "auto"),
    )
    quic_probe_timeout: float = setting(
        3.0, "auto: seconds to wait for a QUIC handshake", check=POSITIVE_SECONDS
    )
    auto_remember: float = setting(
        600.0, "auto: seconds to stay on WebSocket after QUIC failed", check=in_range(0)
    )
    connect_timeout: float = setting(
        10.0, "seconds to establish TLS and the WebSocket", check=POSITIVE_SECONDS
    )
    backoff_initial: float = setting(
        0.5, "first reconnect delay bound, seconds", check=POSITIVE_SECONDS
    )
    backoff_cap: float = setting(
        30.0,
        "longest reconnect delay, seconds (full jitter below it)",
        check=POSITIVE_SECONDS,
    )
    window: int = setting(256, "outbox messages in flight before acks", check=WINDOW)
    ping_interval: float = setting(
        15.0, "seconds between pings to the cloud", check=POSITIVE_SECONDS
    )
    missed_pings: int = setting(
        3, "pings missed before the link is declared dead", check=MISSED_PINGS
    )
    max_frame_bytes: int = setting(
        1 << 20, "largest protocol frame accepted, bytes", check=FRAME_BYTES
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.backoff_cap < self.backoff_initial:
            yield (
                "backoff_cap",
                f"must be >= backoff_initial ({self.backoff_initial:g}), got {self.backoff_cap:g}",
            )

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
    max_concurrent: int = setting(
        0, "task runs at once; 0 means the number of CPUs", check=in_range(0, 1024)
    )
    output_tail_bytes: int = setting(
        4096, "bytes of stdout and of stderr kept per run", check=in_range(0, 256 * 1024)
    )
    kill_grace: float = setting(
        2.0, "seconds between SIGTERM and SIGKILL on timeout or stop", check=in_range(0, 300)
    )
    run_as: str = setting(
        "",
        "user task commands run as when edgecore runs as root (empty: nobody; 'root' only "
        "if you mean it); when edgecore is not root, commands run as its own user",
        check=USER_NAME,
    )
    allow_env: list[str] = setting(
        [],
        "variables tasks may set although they change what programs load or find "
        "(PATH, LD_PRELOAD, PYTHONPATH, ...: see docs/operations.md); empty refuses them",
        check=each(ENV_NAME),
    )
    max_open_files: int = setting(1024, "RLIMIT_NOFILE of every run", check=in_range(16, 1 << 20))
    default_memory_mb: int = setting(
        0,
        "address-space limit (RLIMIT_AS) of a run whose task declares no "
        "resources.memory_mb; 0: none",
        check=in_range(0, 1 << 20),
    )


@dataclass(frozen=True)
class EdgeConfig:
    data_dir: str = setting(
        "/var/lib/edgesync/edge", "keys, certificates and the SQLite store", check=USABLE_DIR
    )
    labels: dict[str, str] = setting(
        {}, "labels reported to the cloud, used by task selectors", check=each(non_empty())
    )
    outbox_max_rows: int = setting(
        100_000,
        "outbox bound; above it telemetry and status rows are dropped oldest first; "
        "results and twin reports never (new ones wait)",
        check=in_range(1),
    )
    log_level: str = setting("INFO", "least severe log level written", check=LOG_LEVEL)
    cloud: CloudEndpoint = section(CloudEndpoint, "where the cloud is")
    link: LinkConfig = section(LinkConfig, "the connection to the cloud")
    runtime: RuntimeConfig = section(RuntimeConfig, "task execution")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def db_path(self) -> Path:
        return self.data_path / DB_NAME

    def problems(self) -> Iterator[tuple[str, str]]:
        """A result must fit in one frame, or it would sit in the outbox for ever."""
        worst = 2 * ESCAPED_BYTES_PER_OUTPUT_BYTE * self.runtime.output_tail_bytes
        if worst + RESULT_OVERHEAD_BYTES > self.link.max_frame_bytes:
            yield (
                "runtime.output_tail_bytes",
                f"two tails of {self.runtime.output_tail_bytes} bytes can encode to "
                f"{worst + RESULT_OVERHEAD_BYTES} bytes, above link.max_frame_bytes "
                f"({self.link.max_frame_bytes}); lower it or raise max_frame_bytes "
                "(on the cloud too)",
            )


CONFIG_NAME = "edgecore.yaml"
DB_NAME = "edge.db"


def load_edge_config(path: Path | None, data_dir: str | None = None) -> EdgeConfig:
    """Load `path`, or `DATA_DIR/edgecore.yaml` when only a data dir is given.

    An empty file means every default. Raises ConfigError listing every problem as
    `FILE: key: what is wrong` (`--data-dir: data_dir: …` for the override).
    """
    if path is None and data_dir is not None and (Path(data_dir) / CONFIG_NAME).exists():
        path = Path(data_dir) / CONFIG_NAME
    raw = load_yaml_file(path) if path else {}
    key_sources = {}
    if data_dir is not None:
        raw = {**raw, "data_dir": data_dir}
        key_sources["data_dir"] = "--data-dir"
    return from_dict(EdgeConfig, raw, str(path) if path else "<defaults>", key_sources=key_sources)
