"""Config validation: every bad value is refused as `FILE: key: what is wrong`.

The loader is called directly for every case the hardening issue names; the
subprocess tests in tests/integration/test_entrypoints.py run the real entry points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudcore.config import CloudConfig, load_cloud_config
from edgecore.config import EdgeConfig, load_edge_config
from shared.config import check_defaults, describe_checks, from_dict, render_defaults
from shared.errors import ConfigError


def write(tmp_path: Path, data: Any, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def cloud_error(tmp_path: Path, data: Any) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_cloud_config(path)
    return str(info.value)


def edge_error(tmp_path: Path, data: Any) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    return str(info.value)


CLOUD_CASES = [
    ({"log_level": "BOGUS"}, "log_level: must be one of DEBUG, INFO, WARNING, ERROR"),
    ({"hub": {"websocket_port": 70000}}, "hub.websocket_port: must be 0 to 65535"),
    ({"hub": {"websocket_port": -1}}, "hub.websocket_port: must be 0 to 65535"),
    ({"hub": {"quic_port": -2}}, "hub.quic_port: must be -1 to 65535"),
    ({"api": {"port": 65536}}, "api.port: must be 0 to 65535"),
    ({"pki": {"hosts": []}}, "pki.hosts: must not be empty"),
    ({"pki": {"hosts": ["ok.example", "bad host!"]}}, "pki.hosts: [1]: 'bad host!' is neither"),
    ({"hub": {"listen": "not-an-ip"}}, "hub.listen: must be an IP address"),
    ({"api": {"listen": "localhost"}}, "api.listen: must be an IP address"),
    ({"database_url": "not a url"}, "database_url: is not an SQLAlchemy URL"),
    ({"database_url": "postgres://u@h/db"}, "database_url: database 'postgres' is not supported"),
    ({"database_url": "sqlite://"}, "database_url: sqlite needs a file"),
    ({"hub": {"window": 0}}, "hub.window: must be 1 to 65536, got 0"),
    ({"hub": {"ping_interval": 0}}, "hub.ping_interval: must be > 0, got 0"),
    ({"hub": {"ping_interval": float("nan")}}, "hub.ping_interval: must be a finite number"),
    ({"hub": {"handshake_timeout": -1}}, "hub.handshake_timeout: must be > 0"),
    ({"hub": {"missed_pings": 0}}, "hub.missed_pings: must be 1 to 100"),
    ({"hub": {"max_frame_bytes": -1}}, "hub.max_frame_bytes: must be 4096 to 67108864, got -1"),
    ({"result_history": -1}, "result_history: must be 1 to 10000, got -1"),
    ({"pki": {"node_cert_days": 0}}, "pki.node_cert_days: must be 1 to 3650, got 0"),
    ({"pki": {"default_token_ttl": 0}}, "pki.default_token_ttl: must be > 0 and <= 604800"),
    ({"sqlite_synchronous": "fast"}, "sqlite_synchronous: must be one of NORMAL, FULL, EXTRA"),
    ({"hub": {"window": "x"}}, "hub.window: must be int, got str 'x'"),
    ({"hub": {"window": True}}, "hub.window: must be int, got bool True"),
    ({"hub": {"windw": 3}}, "hub.windw: unknown setting (known here:"),
    ({"hub": 3}, "hub: must be a mapping of settings, got int"),
    (
        {"hub": {"websocket_port": 9999}, "api": {"port": 9999}},
        "api.port: is hub.websocket_port too (9999)",
    ),
]


@pytest.mark.parametrize(("data", "expected"), CLOUD_CASES)
def test_bad_cloud_value_names_file_key_and_problem(
    tmp_path: Path, data: dict[str, Any], expected: str
) -> None:
    message = cloud_error(tmp_path, data)
    assert message.startswith(f"{tmp_path / 'c.yaml'}: "), message
    assert expected in message, message
    assert "\n" not in message, message  # one problem, one line


EDGE_CASES = [
    ({"link": {"transport": "carrier-pigeon"}}, "link.transport: must be one of websocket"),
    ({"link": {"backoff_initial": -1}}, "link.backoff_initial: must be > 0, got -1"),
    ({"link": {"backoff_cap": -0.5}}, "link.backoff_cap: must be > 0"),
    (
        {"link": {"backoff_initial": 5, "backoff_cap": 1}},
        "link.backoff_cap: must be >= backoff_initial (5), got 1",
    ),
    ({"link": {"window": 0}}, "link.window: must be 1 to 65536"),
    ({"link": {"ping_interval": 0}}, "link.ping_interval: must be > 0"),
    ({"link": {"max_frame_bytes": -1}}, "link.max_frame_bytes: must be 4096 to"),
    ({"link": {"connect_timeout": 0}}, "link.connect_timeout: must be > 0"),
    ({"runtime": {"output_tail_bytes": -1}}, "runtime.output_tail_bytes: must be 0 to 262144"),
    (
        {"runtime": {"output_tail_bytes": 200_000}},
        "runtime.output_tail_bytes: two tails of 200000 bytes can encode to",
    ),
    ({"runtime": {"max_concurrent": -1}}, "runtime.max_concurrent: must be 0 to 1024"),
    ({"runtime": {"kill_grace": -1}}, "runtime.kill_grace: must be 0 to 300"),
    ({"runtime": {"allow_env": ["LD_PRELOAD", "A=B"]}}, "runtime.allow_env: [1]: 'A=B' is not"),
    ({"runtime": {"run_as": "no body"}}, "runtime.run_as: 'no body' is not a user name"),
    ({"runtime": {"max_open_files": 0}}, "runtime.max_open_files: must be 16 to"),
    ({"runtime": {"default_memory_mb": -5}}, "runtime.default_memory_mb: must be 0 to"),
    ({"outbox_max_rows": 0}, "outbox_max_rows: must be >= 1"),
    ({"log_level": "verbose"}, "log_level: must be one of DEBUG"),
    ({"cloud": {"websocket_url": "ws://h:1/x"}}, "cloud.websocket_url: must be wss://HOST:PORT"),
    ({"cloud": {"api_url": "https://h:99999"}}, "cloud.api_url: must be https://HOST:PORT"),
    ({"cloud": {"quic_url": "quic://"}}, "cloud.quic_url: must be quic://HOST:PORT"),
    ({"labels": {"zone": ""}}, "labels: [zone]: must not be empty"),
]


@pytest.mark.parametrize(("data", "expected"), EDGE_CASES)
def test_bad_edge_value_names_file_key_and_problem(
    tmp_path: Path, data: dict[str, Any], expected: str
) -> None:
    message = edge_error(tmp_path, data)
    assert message.startswith(f"{tmp_path / 'c.yaml'}: "), message
    assert expected in message, message


def test_every_problem_is_reported_at_once_one_per_line(tmp_path: Path) -> None:
    message = cloud_error(
        tmp_path, {"log_level": "BOGUS", "hub": {"window": 0, "listen": "x"}, "result_history": -1}
    )
    lines = message.splitlines()
    assert len(lines) == 4, lines
    assert all(line.startswith(f"{tmp_path / 'c.yaml'}: ") for line in lines)
    keys = {line.split(": ")[1] for line in lines}
    assert keys == {"log_level", "hub.window", "hub.listen", "result_history"}


def test_non_utf8_file_is_named_with_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"log_level: INFO\nhub: {listen: \xe9t\xe9}\n")
    with pytest.raises(ConfigError) as info:
        load_cloud_config(path)
    assert str(info.value) == (
        f"{path}: line 2: not UTF-8 text (byte 0xe9 at offset 30); save the file as UTF-8"
    )


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    message = edge_error(tmp_path, "link:\n  window: [1\n")
    assert message.startswith(f"{tmp_path / 'c.yaml'}: line 3, column 1: invalid YAML"), message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = cloud_error(tmp_path, "- a\n- b\n")
    assert "the top level must be a mapping of settings, got list" in message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_means_all_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load_cloud_config(path, str(tmp_path / "d")) == CloudConfig(data_dir=str(tmp_path / "d"))
    assert load_edge_config(path) == EdgeConfig()


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    message = cloud_error(tmp_path, {"data_dir": str(tmp_path / "afile")})
    assert f"data_dir: {tmp_path / 'afile'} exists and is not a directory" in message
    message = edge_error(tmp_path, {"data_dir": str(tmp_path / "afile" / "below")})
    assert "data_dir: " in message and "cannot be created" in message


def test_data_dir_override_is_named_as_the_command_line_option(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    path = write(tmp_path, {"log_level": "INFO"})
    with pytest.raises(ConfigError) as info:
        load_cloud_config(path, str(tmp_path / "afile"))
    assert str(info.value).startswith("--data-dir: data_dir: "), info.value


def test_missing_data_dir_is_fine_it_is_created_later(tmp_path: Path) -> None:
    config = load_edge_config(None, str(tmp_path / "new" / "edge"))
    assert config.data_path == tmp_path / "new" / "edge"
    assert not config.data_path.exists()


def test_good_values_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "log_level": "debug",
            "database_url": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
            "hub": {"listen": "::", "quic_port": -1, "websocket_port": 0},
            "api": {"listen": "127.0.0.1", "port": 0},
            "pki": {"hosts": ["cloud.example.net", "10.0.0.1", "::1"], "node_cert_days": 30},
        },
    )
    config = load_cloud_config(path, str(tmp_path / "d"))
    assert config.hub.quic_port == -1 and config.pki.hosts[0] == "cloud.example.net"
    assert config.sqlite_path is None


def test_sqlite_path_follows_the_url(tmp_path: Path) -> None:
    assert CloudConfig(data_dir=str(tmp_path)).sqlite_path == tmp_path / "cloud.db"
    other = CloudConfig(database_url=f"sqlite:///{tmp_path}/x.db")
    assert other.sqlite_path == tmp_path / "x.db"


@pytest.mark.parametrize("cls", [CloudConfig, EdgeConfig])
def test_defaults_pass_their_own_checks(cls: type[Any]) -> None:
    assert check_defaults(cls) == []


@pytest.mark.parametrize("cls", [CloudConfig, EdgeConfig])
def test_print_default_config_shows_every_constraint_and_loads_back(
    cls: type[Any], tmp_path: Path
) -> None:
    text = render_defaults(cls)
    for key, allowed in describe_checks(cls):
        assert f"#   allowed: {allowed}" in text, key
    assert "allowed: 0 to 65535; 0 picks a free one" in text or cls is EdgeConfig
    data = yaml.safe_load(text)
    data["data_dir"] = str(tmp_path)
    assert from_dict(cls, data, "<printed>") == cls(data_dir=str(tmp_path))
