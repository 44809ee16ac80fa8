"""`edgectl`: the operator CLI (tokens, nodes, tasks) over the cloud's HTTPS API.

It finds the cloud through `--config FILE`, `$EDGECTL_CONFIG`, or
./edgectl.yaml; cloudcore writes that file (server URL, CA, admin token;
mode 0600) into its data dir on first start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.config import (
    Check,
    decode_text,
    from_dict,
    load_yaml_file,
    non_empty,
    setting,
    url,
    yaml_error_text,
)
from shared.errors import ConfigError
from shared.text import escape_text

TIMEOUT = 30.0
CELL_MAX_CHARS = 80
"""Longest table cell (before escaping); `-o yaml|json` shows the whole value."""


class CtlError(Exception):
    """A failure edgectl reports as `edgectl: MESSAGE` (exit 1)."""

    exit_code = 1


class CtlConfigError(CtlError):
    """edgectl's config or an input file is unusable (exit 2): fix the file."""

    exit_code = 2


PEM_CERT = Check(
    "a PEM certificate (-----BEGIN CERTIFICATE-----)",
    lambda v: None if "-----BEGIN CERTIFICATE-----" in v else "is not a PEM certificate",
)


@dataclass(frozen=True)
class EdgectlConfig:
    """What cloudcore writes to DATA_DIR/edgectl.yaml (mode 0600)."""

    server: str = setting(
        "", "the cloud's operator API, https://HOST:10002", check=url("https", empty_ok=False)
    )
    token: str = setting("", "the admin bearer token (DATA_DIR/admin.token)", check=non_empty())
    ca: str = setting("", "the cloud CA certificate, PEM", check=PEM_CERT)


def load_ctl_config(path: Path) -> EdgectlConfig:
    """Load and check edgectl's config; raises CtlConfigError naming the file and the key."""
    try:
        raw = load_yaml_file(path)
        return from_dict(EdgectlConfig, raw, str(path))
    except ConfigError as exc:
        text = str(exc)
        if text.startswith("cannot read config file"):
            text += "; pass --config or set EDGECTL_CONFIG (cloudcore writes DATA_DIR/edgectl.yaml)"
        raise CtlConfigError(text) from None


class Client:
    def __init__(self, config_path: Path) -> None:
        config = load_ctl_config(config_path)
        self.server = config.server.rstrip("/")
        self.token = config.token
        try:
            self.ctx = ssl.create_default_context(cadata=config.ca)
        except (ssl.SSLError, ValueError) as exc:
            raise CtlConfigError(f"{config_path}: ca: not a usable certificate: {exc}") from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            data = json.dumps(body).encode() if body is not None else None
        except (TypeError, ValueError) as exc:  # YAML made a date or a set, say
            raise CtlError(
                f"cannot send this document: {exc}; quote dates and times in YAML "
                "(release: '2026-01-01')"
            ) from None
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=TIMEOUT) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", exc.reason)
            except (ValueError, AttributeError):
                message = exc.reason
            raise CtlError(f"{method} {path}: HTTP {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CtlError(
                f"cannot reach the cloud at {self.server}: {getattr(exc, 'reason', exc)}"
            ) from None


def _table(rows: list[list[str]], headers: list[str]) -> str:
    """Aligned columns. Every cell is escaped: much of it is what a node reported about
    itself, and a raw CR, LF or escape sequence would forge rows or repaint the screen."""
    rows = [[escape_text(v, CELL_MAX_CHARS) for v in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in [headers, *rows]
    ]
    return "\n".join(lines)


def _age(ms: int) -> str:
    if not ms:
        return "never"
    seconds = max(0, int(dt.datetime.now(dt.timezone.utc).timestamp() - ms / 1000))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class _SafeDumper(yaml.SafeDumper):
    """YAML whose strings never put a raw control character, CR or LF on the terminal:
    any string that is not printable as it stands is written double-quoted, where YAML
    escapes them (\\n, \\e, \\u202E). The data stays faithful: it loads back equal."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = None if text.isprintable() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_SafeDumper.add_representer(str, _represent_str)


def _print(data: Any, fmt: str) -> None:
    """-o json / -o yaml: the whole value, escaped by the format (json.dumps escapes every
    control and non-ASCII character; the YAML dumper double-quotes such strings)."""
    if fmt == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(yaml.dump(data, Dumper=_SafeDumper, sort_keys=False, width=1 << 16).rstrip())


def cmd_token_create(client: Client, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"node": args.node}
    if args.ttl:
        body["ttl"] = _parse_duration(args.ttl)
    if args.label:
        body["labels"] = _label_changes(args.label, allow_removal=False)
    answer = client.call("POST", "/api/v1/tokens", body)
    if args.quiet:
        print(answer["token"])
        return
    print(answer["token"])
    print(
        f"\n# single use, expires {_age_until(answer['expires_ms'])}. On the node run:\n"
        f"#   edgecore join --cloud {client.server} --token {answer['token'][:12]}…",
        file=sys.stderr,
    )


def _label_changes(items: list[str], allow_removal: bool = True) -> dict[str, str | None]:
    """KEY=VALUE sets a label; KEY- removes it (as kubectl label does)."""
    changes: dict[str, str | None] = {}
    for item in items:
        if allow_removal and item.endswith("-") and "=" not in item:
            changes[item[:-1]] = None
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            hint = " or KEY- to remove one" if allow_removal else ""
            raise CtlError(f"label {item!r}: use KEY=VALUE{hint}")
        changes[key] = value
    return changes


def cmd_node_label(client: Client, args: argparse.Namespace) -> None:
    node = client.call("GET", f"/api/v1/nodes/{args.name}")
    labels = dict(node["labels"])
    for key, value in _label_changes(args.labels).items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
    answer = client.call("PUT", f"/api/v1/nodes/{args.name}/labels", {"labels": labels})
    shown = ",".join(f"{k}={v}" for k, v in sorted(answer["labels"].items())) or "(none)"
    print(f"node {escape_text(args.name)} labelled: {escape_text(shown)}")


def _age_until(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise CtlError(f"--ttl {text!r}: use a number of seconds or 30m, 1h, 2d") from None


def cmd_node_list(client: Client, args: argparse.Namespace) -> None:
    items = client.call("GET", "/api/v1/nodes")["items"]
    if args.output != "table":
        _print(items, args.output)
        return
    rows = [
        [
            n["name"],
            n["state"],
            n["transport"] or "-",
            _age(n["last_seen_ms"]),
            str(n["capacity"].get("cpus", "-")),
            n["capacity"].get("arch", "-"),
            n["software"] or "-",
            ",".join(f"{k}={v}" for k, v in n["labels"].items()) or "-",
        ]
        for n in items
    ]
    print(
        _table(
            rows, ["NAME", "STATE", "TRANSPORT", "LAST SEEN", "CPUS", "ARCH", "VERSION", "LABELS"]
        )
    )


def cmd_node_get(client: Client, args: argparse.Namespace) -> None:
    _print(
        client.call("GET", f"/api/v1/nodes/{args.name}"),
        "yaml" if args.output == "table" else args.output,
    )


def cmd_node_delete(client: Client, args: argparse.Namespace) -> None:
    client.call("DELETE", f"/api/v1/nodes/{args.name}")
    print(f"node {args.name} deleted")


def _load_docs(path: str) -> list[Any]:
    """The YAML documents of `path` (- for stdin); raises CtlConfigError naming the file.

    Empty documents (a bare `---`) are skipped, but a file with no document at all
    is refused: applying nothing is almost always a wrong path or an empty pipe.
    """
    name = "<stdin>" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CtlConfigError(f"cannot read {name}: {exc.strerror}") from None
    try:
        text = decode_text(data, name)
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except ConfigError as exc:
        raise CtlConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise CtlConfigError(f"{name}: {yaml_error_text(exc)}") from None
    if not docs:
        raise CtlConfigError(
            f"{name}: holds no task document (empty, or only comments); nothing applied"
        )
    for index, doc in enumerate(docs, 1):
        if not isinstance(doc, dict):
            raise CtlConfigError(
                f"{name}: document {index} is a {type(doc).__name__}, not a task mapping "
                "(apiVersion, kind, metadata, spec); nothing applied"
            )
    return docs


def cmd_task_apply(client: Client, args: argparse.Namespace) -> None:
    for doc in _load_docs(args.file):
        task = client.call("POST", "/api/v1/tasks", doc)
        nodes = task["nodes"]
        where = "placement still running" if nodes is None else f"{nodes} node(s)"
        print(
            f"task/{task['namespace']}/{task['name']} applied (generation "
            f"{task['generation']}, {where})"
        )


def _split(ref: str, namespace: str) -> tuple[str, str]:
    if "/" in ref:
        ns, _, name = ref.partition("/")
        return ns, name
    return namespace, ref


def cmd_task_list(client: Client, args: argparse.Namespace) -> None:
    items = client.call("GET", "/api/v1/tasks")["items"]
    if args.output != "table":
        _print(items, args.output)
        return
    rows = []
    for t in items:
        phases: dict[str, int] = {}
        for a in t["assignments"]:
            phases[a["phase"]] = phases.get(a["phase"], 0) + 1
        spec = t["document"]["spec"]
        rows.append(
            [
                t["namespace"],
                t["name"],
                spec["trigger"]["type"],
                str(t["generation"]),
                str(len(t["assignments"])),
                " ".join(f"{k}={v}" for k, v in sorted(phases.items())) or "-",
            ]
        )
    print(_table(rows, ["NAMESPACE", "NAME", "TRIGGER", "GEN", "NODES", "PHASES"]))


def cmd_task_get(client: Client, args: argparse.Namespace) -> None:
    ns, name = _split(args.name, args.namespace)
    task = client.call("GET", f"/api/v1/tasks/{ns}/{name}")
    if args.output != "table":
        _print(task, args.output)
        return
    print(f"task/{ns}/{name}  generation {task['generation']}")
    rows = [
        [
            a["node"],
            a["phase"],
            str(a["epoch"]),
            str(a["runs"]),
            str((a.get("last_result") or {}).get("exit_code", "-")),
            str((a.get("last_result") or {}).get("stdout_tail") or "").strip()[-40:],
        ]
        for a in task["assignments"]
    ]
    print(_table(rows, ["NODE", "PHASE", "EPOCH", "RUNS", "EXIT", "LAST OUTPUT"]))


def cmd_task_delete(client: Client, args: argparse.Namespace) -> None:
    ns, name = _split(args.name, args.namespace)
    client.call("DELETE", f"/api/v1/tasks/{ns}/{name}")
    print(f"task/{ns}/{name} deleted")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgectl",
        description=(
            "Operate an edgesync fleet: join tokens, nodes and tasks. Finds the cloud through "
            "--config, $EDGECTL_CONFIG or ./edgectl.yaml (cloudcore writes DATA_DIR/edgectl.yaml)."
        ),
    )
    parser.add_argument("--config", help="edgectl config file")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    token = sub.add_parser("token", help="join tokens").add_subparsers(dest="verb", required=True)
    create = token.add_parser("create", help="create a single-use join token for a node")
    create.add_argument("--node", required=True, help="the node name the token joins")
    create.add_argument("--ttl", help="validity, e.g. 30m, 1h (default: the cloud's, 1h)")
    create.add_argument("-q", "--quiet", action="store_true", help="print only the token")
    create.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a placement label the node gets when it joins; repeatable",
    )
    create.set_defaults(func=cmd_token_create)

    node = sub.add_parser("node", help="nodes").add_subparsers(dest="verb", required=True)
    for verb, func, needs_name in (
        ("list", cmd_node_list, False),
        ("get", cmd_node_get, True),
        ("delete", cmd_node_delete, True),
    ):
        p = node.add_parser(verb, help=f"{verb} node(s)")
        if needs_name:
            p.add_argument("name")
        p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
        p.set_defaults(func=func)
    label = node.add_parser(
        "label",
        help="set (KEY=VALUE) or remove (KEY-) a node's placement labels",
        description="Placement labels are the operator's: tasks select nodes by them. "
        "What a node reports about itself is shown as reported_labels and is not used.",
    )
    label.add_argument("name")
    label.add_argument("labels", nargs="+", metavar="KEY=VALUE|KEY-")
    label.set_defaults(func=cmd_node_label)

    task = sub.add_parser("task", help="tasks").add_subparsers(dest="verb", required=True)
    apply = task.add_parser("apply", help="create or update tasks from YAML")
    apply.add_argument("-f", "--file", required=True, help="YAML file (- for stdin)")
    apply.set_defaults(func=cmd_task_apply)
    for verb, func, needs_name in (
        ("list", cmd_task_list, False),
        ("get", cmd_task_get, True),
        ("delete", cmd_task_delete, True),
    ):
        p = task.add_parser(verb, help=f"{verb} task(s)")
        if needs_name:
            p.add_argument("name", help="NAME or NAMESPACE/NAME")
        p.add_argument("-n", "--namespace", default="default")
        p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = args.config or os.environ.get("EDGECTL_CONFIG") or "edgectl.yaml"
    try:
        args.func(Client(Path(config)), args)
    except CtlError as exc:
        for line in str(exc).splitlines():
            print(f"edgectl: {line}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
