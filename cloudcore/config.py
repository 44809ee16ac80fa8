"""cloudcore configuration (see `cloudcore --print-default-config`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.config import from_dict, load_yaml_file, section, setting
from shared.protocol.codec import Limits
from shared.protocol.session import SessionConfig


@dataclass(frozen=True)
class HubConfig:
    listen: str = setting("0.0.0.0", "address the edge-facing transports listen on")
    websocket_port: int = setting(10000, "WebSocket (wss) port for edge sessions; 0 picks one")
    quic_port: int = setting(10001, "QUIC (UDP) port for edge sessions; 0 picks one, -1 disables")
    max_frame_bytes: int = setting(1 << 20, "largest protocol frame accepted, bytes")
    window: int = setting(256, "unacked desired-state messages in flight per node")
    ping_interval: float = setting(15.0, "seconds between pings on an edge session")
    missed_pings: int = setting(3, "pings missed before a session is dead and its node NotReady")
    handshake_timeout: float = setting(10.0, "seconds a new connection has to say hello")
    max_pending_handshakes: int = setting(
        256, "WebSocket connections allowed to be unauthenticated at once; more are closed"
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
    listen: str = setting("0.0.0.0", "address of the HTTPS join endpoint and operator API")
    port: int = setting(10002, "HTTPS port for joins and the operator API; 0 picks one")
    insecure_no_auth: bool = setting(
        False, "DANGER: serve the operator API without a bearer token (never in production)"
    )


@dataclass(frozen=True)
class PkiConfig:
    hosts: list[str] = setting(
        ["127.0.0.1", "localhost"],
        "names and IPs edges use to reach this cloud (server certificate SANs)",
    )
    node_cert_days: int = setting(365, "validity of node certificates issued at join")
    default_token_ttl: float = setting(3600.0, "seconds a join token stays valid by default")


@dataclass(frozen=True)
class CloudConfig:
    data_dir: str = setting("/var/lib/edgesync/cloud", "CA, keys, admin token and SQLite database")
    database_url: str = setting(
        "", "SQLAlchemy URL; empty means SQLite in data_dir (postgresql+psycopg://... for a fleet)"
    )
    sqlite_synchronous: str = setting(
        "FULL", "SQLite synchronous mode (FULL survives power loss; NORMAL is faster)"
    )
    result_history: int = setting(20, "results kept per task and node")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    hub: HubConfig = section(HubConfig, "edge-facing transports")
    api: ApiConfig = section(ApiConfig, "join endpoint and operator REST API")
    pki: PkiConfig = section(PkiConfig, "certificate authority and join tokens")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'cloud.db'}"


def load_cloud_config(path: Path | None, data_dir: str | None = None) -> CloudConfig:
    """Load the YAML config at `path` (defaults if None); `data_dir` overrides the file's."""
    raw = load_yaml_file(path) if path else {}
    if data_dir is not None:
        raw = {**raw, "data_dir": data_dir}
    return from_dict(CloudConfig, raw, str(path) if path else "<defaults>")
