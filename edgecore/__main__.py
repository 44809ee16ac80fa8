"""`edgecore`: the edge daemon (join once, then serve under systemd)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from shared.aio.daemon import print_error, run_daemon
from shared.config import LOG_LEVELS, render_defaults
from shared.errors import ConfigError, EdgesyncError

DEFAULT_DATA_DIR = "/var/lib/edgesync/edge"

DESCRIPTION = """\
edgesync edge daemon. Join a cloud once with a token from
`edgectl token create --node NAME`, then run `edgecore serve` (normally as
the systemd unit in docs/operations.md). edgecore keeps running its tasks
while the cloud is unreachable and reconciles when it comes back.
"""


def _labels(values: list[str]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"edgecore: --label needs KEY=VALUE, got {item!r}")
        labels[key] = value
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edgecore",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--print-default-config",
        action="store_true",
        help="print the default configuration with comments and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    join = sub.add_parser("join", help="join a cloud with a token (once per node)")
    join.add_argument("--cloud", required=True, help="the cloud's join URL, https://HOST:10002")
    join.add_argument("--token", required=True, help="from `edgectl token create --node NAME`")
    join.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help=f"where keys, config and state live (default {DEFAULT_DATA_DIR})",
    )
    join.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label this node reports about itself; repeatable (placement uses the labels "
        "the operator gave its token, or those the cloud lets nodes set: node_label_keys)",
    )
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument(
        "--data-dir", help=f"data dir holding edgecore.yaml (default {DEFAULT_DATA_DIR})"
    )
    serve.add_argument(
        "--config", type=Path, help="a config file instead of DATA_DIR/edgecore.yaml"
    )
    serve.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="DEBUG, INFO, WARNING or ERROR (overrides config)",
    )
    args = parser.parse_args(argv)

    from edgecore.config import EdgeConfig, load_edge_config

    if args.print_default_config:
        sys.stdout.write(render_defaults(EdgeConfig))
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "join":
        from edgecore.join import join as do_join

        try:
            node = do_join(args.cloud, args.token, Path(args.data_dir), _labels(args.label))
        except ConfigError as exc:
            print_error("edgecore join", exc)
            return 2
        except EdgesyncError as exc:
            print_error("edgecore join", exc)
            return 1
        print(f"joined as node {node}; start it with: edgecore serve --data-dir {args.data_dir}")
        return 0

    data_dir = args.data_dir or (None if args.config else DEFAULT_DATA_DIR)
    try:
        config = load_edge_config(args.config, data_dir)
    except EdgesyncError as exc:
        print_error("edgecore", exc)
        return 2
    from edgecore.config import CONFIG_NAME
    from shared.files import ensure_private_files, secure_data_dir

    def prepare() -> None:
        secure_data_dir(config.data_path, [config.db_path])
        ensure_private_files(
            [config.data_path / "node.key", config.data_path / CONFIG_NAME], what="secret file"
        )

    def serve_() -> Coroutine[Any, Any, None]:
        from edgecore.app import EdgeCore

        return EdgeCore(config).run()

    return run_daemon("edgecore", args.log_level or config.log_level, serve_, prepare)


if __name__ == "__main__":
    sys.exit(main())
