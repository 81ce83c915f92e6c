"""The ``softswitch`` command: run, check, reload."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from switch.config import ConfigError, load_config


def _check(path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    users = sum(len(t.users) for t in config.tenants)
    print(f"{path}: OK ({len(config.tenants)} tenants, {users} users)")
    return 0


def _run(path: Path, pid_file: Path | None) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    from switch.daemon import run  # imported late: `check` needs none of the runtime

    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    try:
        return run(path, config)
    finally:
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


def _reload(pid_file: Path) -> int:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        print(f"{pid_file}: cannot read the daemon's pid: {exc}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"{pid_file}: no process {pid} (is the daemon running?)", file=sys.stderr)
        return 1
    print(f"sent reload to {pid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="softswitch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", type=Path, default=Path("config/softswitch.yaml"))
    run.add_argument("--pid-file", type=Path, help="write the daemon's pid here (for reload)")
    check = sub.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("-c", "--config", type=Path, default=Path("config/softswitch.yaml"))
    reload = sub.add_parser("reload", help="make a running daemon re-read its configuration")
    reload.add_argument("--pid-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args.config, args.pid_file)
    return _reload(args.pid_file)


if __name__ == "__main__":
    sys.exit(main())
