"""cloudcore configuration (see `cloudcore --print-default-config`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.config import (
    FRAME_BYTES,
    HOST,
    IP_ADDRESS,
    LOG_LEVEL,
    MISSED_PINGS,
    PORT,
    POSITIVE_SECONDS,
    SQLALCHEMY_URL,
    WINDOW,
    all_of,
    each,
    from_dict,
    in_range,
    load_yaml_file,
    non_empty,
    one_of,
    section,
    setting,
)
from shared.files import USABLE_DIR
from shared.protocol.codec import Limits
from shared.protocol.session import SessionConfig


@dataclass(frozen=True)
class HubConfig:
    listen: str = setting(
        "0.0.0.0", "address the edge-facing transports listen on", check=IP_ADDRESS
    )
    websocket_port: int = setting(
        10000, "WebSocket (wss) port for edge sessions; 0 picks one", check=PORT
    )
    quic_port: int = setting(
        10001,
        "QUIC (UDP) port for edge sessions; 0 picks one, -1 disables",
        check=in_range(-1, 65535, extra="0 picks a free one, -1 disables QUIC"),
    )
    max_frame_bytes: int = setting(
        1 << 20, "largest protocol frame accepted, bytes", check=FRAME_BYTES
    )
    window: int = setting(256, "unacked desired-state messages in flight per node", check=WINDOW)
    ping_interval: float = setting(
        15.0, "seconds between pings on an edge session", check=POSITIVE_SECONDS
    )
    missed_pings: int = setting(
        3, "pings missed before a session is dead and its node NotReady", check=MISSED_PINGS
    )
    handshake_timeout: float = setting(
        10.0, "seconds a new connection has to say hello", check=POSITIVE_SECONDS
    )
    max_pending_handshakes: int = setting(
        256,
        "WebSocket connections allowed to be unauthenticated at once; more are closed",
        check=in_range(1, 1_000_000),
    )
    compression: bool = setting(
        False, "permessage-deflate on WebSocket (costs ~33 KiB RAM per connection)"
    )

    @property
    def quic_idle_timeout(self) -> float:
        """QUIC's own idle timeout sits just past the protocol's dead-link deadline."""
        return self.ping_interval * (self.missed_pings + 1)

    def session_config(self) -> SessionConfig:
        return SessionConfig(
            window=self.window,
            ping_interval=self.ping_interval,
            missed_pings=self.missed_pings,
            handshake_timeout=self.handshake_timeout,
            limits=Limits(max_frame_bytes=self.max_frame_bytes),
        )


@dataclass(frozen=True)
class ApiConfig:
    listen: str = setting(
        "0.0.0.0", "address of the HTTPS join endpoint and operator API", check=IP_ADDRESS
    )
    port: int = setting(10002, "HTTPS port for joins and the operator API; 0 picks one", check=PORT)
    insecure_no_auth: bool = setting(
        False, "DANGER: serve the operator API without a bearer token (never in production)"
    )


@dataclass(frozen=True)
class PkiConfig:
    hosts: list[str] = setting(
        ["127.0.0.1", "localhost"],
        "names and IPs edges use to reach this cloud (server certificate SANs)",
        check=all_of(non_empty("the server certificate needs at least one name"), each(HOST)),
    )
    node_cert_days: int = setting(
        365, "validity of node certificates issued at join, days", check=in_range(1, 3650)
    )
    default_token_ttl: float = setting(
        3600.0,
        "seconds a join token stays valid by default",
        check=in_range(0, 7 * 86400, above=True),
    )


@dataclass(frozen=True)
class CloudConfig:
    data_dir: str = setting(
        "/var/lib/edgesync/cloud", "CA, keys, admin token and SQLite database", check=USABLE_DIR
    )
    database_url: str = setting(
        "",
        "SQLAlchemy URL; empty means SQLite in data_dir (postgresql+psycopg://... for a fleet)",
        check=SQLALCHEMY_URL,
    )
    sqlite_synchronous: str = setting(
        "FULL",
        "SQLite synchronous mode (FULL survives power loss; NORMAL is faster)",
        check=one_of("NORMAL", "FULL", "EXTRA", ignore_case=True),
    )
    result_history: int = setting(20, "results kept per task and node", check=in_range(1, 10_000))
    log_level: str = setting("INFO", "least severe log level written", check=LOG_LEVEL)
    node_label_keys: list[str] = setting(
        [],
        "label keys a node may set on itself for placement (hello); other labels it reports "
        "are shown, never used to place work",
        check=each(non_empty("a label key")),
    )
    hub: HubConfig = section(HubConfig, "edge-facing transports")
    api: ApiConfig = section(ApiConfig, "join endpoint and operator REST API")
    pki: PkiConfig = section(PkiConfig, "certificate authority and join tokens")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'cloud.db'}"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for PostgreSQL (its files are the server's)."""
        if not self.db_url.startswith("sqlite"):
            return None
        from sqlalchemy.engine import make_url

        database = make_url(self.db_url).database
        return Path(database) if database and database != ":memory:" else None

    def problems(self) -> Iterator[tuple[str, str]]:
        """Rules across sections: the two TCP listeners cannot share a port."""
        port = self.hub.websocket_port
        if port and port == self.api.port and _overlap(self.hub.listen, self.api.listen):
            yield "api.port", f"is hub.websocket_port too ({port}); give each its own TCP port"


def _overlap(a: str, b: str) -> bool:
    wildcards = {"0.0.0.0", "::"}
    return a == b or a in wildcards or b in wildcards


def load_cloud_config(path: Path | None, data_dir: str | None = None) -> CloudConfig:
    """Load the YAML config at `path` (defaults if None); `data_dir` overrides the file's.

    An empty file means every default. Raises ConfigError listing every problem as
    `FILE: key: what is wrong` (`--data-dir: data_dir: …` for the override).
    """
    raw = load_yaml_file(path) if path else {}
    key_sources = {}
    if data_dir is not None:
        raw = {**raw, "data_dir": data_dir}
        key_sources["data_dir"] = "--data-dir"
    return from_dict(CloudConfig, raw, str(path) if path else "<defaults>", key_sources=key_sources)
