"""`cloudcore`: the cloud controller daemon."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from shared.aio.daemon import print_error, run_daemon
from shared.config import LOG_LEVELS, render_defaults
from shared.errors import EdgesyncError

DESCRIPTION = """\
edgesync cloud controller. Holds the fleet's desired state, serves edges
over mutually-authenticated WebSocket (default tcp :10000) and QUIC
(default udp :10001), and joins plus the operator API over HTTPS (default
:10002). On first start it creates a CA,
a server certificate and an admin token in the data dir, and writes an
edgectl config there (edgectl.yaml).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cloudcore",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML config file (see --print-default-config)")
    parser.add_argument("--data-dir", help="overrides data_dir from the config file")
    parser.add_argument(
        "--print-default-config",
        action="store_true",
        help="print the default configuration with comments and exit",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="DEBUG, INFO, WARNING or ERROR (overrides config)",
    )
    args = parser.parse_args(argv)

    from cloudcore.config import CloudConfig, load_cloud_config

    if args.print_default_config:
        sys.stdout.write(render_defaults(CloudConfig))
        return 0
    if sys.version_info < (3, 11):
        print("cloudcore: needs Python 3.11 or newer (edgecore runs on 3.10)", file=sys.stderr)
        return 2
    try:
        config = load_cloud_config(args.config, args.data_dir)
    except EdgesyncError as exc:
        print_error("cloudcore", exc)
        return 2
    from shared.files import secure_data_dir

    def prepare() -> None:
        sqlite = config.sqlite_path
        secure_data_dir(config.data_path, [sqlite] if sqlite else [])

    def serve() -> Coroutine[Any, Any, None]:
        from cloudcore.app import CloudCore

        return CloudCore(config).run()

    return run_daemon("cloudcore", args.log_level or config.log_level, serve, prepare)


if __name__ == "__main__":
    sys.exit(main())
