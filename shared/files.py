"""Files that hold secrets: created private whatever the umask, tightened when found loose,
and replaced atomically (a crash leaves the old file or the new one).

The daemons keep keys, tokens, task documents (with their `env` values) and
results in their data dir. `secure_data_dir` runs at every start of both
daemons: it creates the data dir 0700 or tightens it, and tightens the
databases (with SQLite's `-wal` and `-shm` files) to 0600, logging a WARNING
for every mode it changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared.config import Check
from shared.errors import ConfigError

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _usable_dir(value: Any) -> str | None:
    """None if `value` is a directory or can be created as one; else what is wrong."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        return f"{value} exists and is not a directory"
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor != path and not ancestor.is_dir():
        return f"{value} cannot be created: {ancestor} is not a directory"
    return None


USABLE_DIR = Check("a directory (created 0700 when missing)", _usable_dir, io=True)
"""A config check: the path is a directory, or one can be created there."""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tighten(path: Path, mode: int, what: str) -> bool:
    """chmod `path` to `mode` if it grants more; True if it changed. Raises ConfigError."""
    current = _mode(path)
    if current & ~mode == 0:
        return False
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise ConfigError(
            f"{what} {path} has mode {current:04o} and cannot be made {mode:04o}: "
            f"{exc.strerror}; chown it to the user this daemon runs as"
        ) from None
    log.warning(
        "%s %s had mode %04o (readable by others); changed it to %04o", what, path, current, mode
    )
    return True


def ensure_private_dir(path: Path, what: str = "data dir") -> bool:
    """Create `path` (and parents) with mode 0700, or tighten it to 0700; True if changed.

    The mode is set explicitly, so the process umask does not matter.
    Raises ConfigError when the path is not a directory or cannot be changed.
    """
    if not path.exists():
        try:
            path.mkdir(parents=True, mode=DIR_MODE)
            os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
        except OSError as exc:
            raise ConfigError(f"cannot create {what} {path}: {exc.strerror}") from None
        return False
    if not path.is_dir():
        raise ConfigError(f"{what} {path} exists and is not a directory")
    return _tighten(path, DIR_MODE, what)


def ensure_private_files(paths: Iterable[Path], what: str = "database file") -> list[Path]:
    """Tighten each existing file (and its SQLite side files) to 0600; returns those changed."""
    changed = []
    for main in paths:
        for path in [main, *(main.with_name(main.name + s) for s in SQLITE_SIDE_FILES)]:
            if path.exists() and _tighten(path, FILE_MODE, what):
                changed.append(path)
    return changed


def secure_data_dir(data_dir: Path, databases: Iterable[Path]) -> None:
    """What both daemons do at start: a private data dir and private database files.

    Files created later are private because the daemons run with umask 0077
    (shared.aio.daemon); SQLite gives its `-wal` and `-shm` files the database's mode.
    Raises ConfigError when a mode cannot be changed (another owner).
    """
    ensure_private_dir(data_dir)
    ensure_private_files(databases)


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, mode 0600; a crash leaves the old file or the new one."""
    tmp = stage_private(path, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def stage_private(path: Path, data: bytes) -> Path:
    """Write `data` to a fsynced temporary file beside `path` (mode 0600); returns its path.

    The caller renames it over `path` (os.replace) when everything it stages is ready.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), FILE_MODE)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def fsync_dir(path: Path) -> None:
    """Make renames in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
