"""The ``softswitch`` command: run, check, reload, migrate."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from switch.config import Config, ConfigError, load_config


def _load(path: Path) -> Config | None:
    """The configuration at ``path``, or None once its problems are printed."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _check(path: Path) -> int:
    config = _load(path)
    if config is None:
        return 1
    users = sum(len(t.users) for t in config.tenants)
    print(f"{path}: OK ({len(config.tenants)} tenants, {users} users)")
    return 0


def _run(path: Path, pid_file: Path | None) -> int:
    config = _load(path)
    if config is None:
        return 1
    from switch.daemon import run  # imported late: `check` needs none of the runtime

    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    try:
        return run(path, config)
    finally:
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


def _migrate(path: Path) -> int:
    config = _load(path)
    if config is None:
        return 1
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from switch.migrations import SchemaError

    shown = make_url(config.store.url).render_as_string(hide_password=True)
    try:
        before, steps, after = asyncio.run(_migrate_store(config.store.url))
    except (SchemaError, SQLAlchemyError, OSError) as exc:
        print(f"{shown}: {exc}", file=sys.stderr)
        return 1
    if not steps:
        print(f"{shown}: schema at revision {after}, the newest: nothing to do")
        return 0
    print(f"{shown}: schema at revision {before or 'none (new, or made before migrations)'}")
    for step in steps:
        print(f"  {step}")
    print(f"{shown}: schema now at revision {after}")
    return 0


async def _migrate_store(url: str) -> tuple[str | None, list[str], str | None]:
    from switch import migrations
    from switch.store import open_store

    store = await open_store(url, migrate=False)
    try:
        before = await store.transaction(migrations.revision)
        steps = await store.transaction(migrations.upgrade)
        after = await store.transaction(migrations.revision)
    finally:
        await store.close()
    return before, steps, after


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


def _media_worker(args: argparse.Namespace) -> int:
    """A media worker process (started by the daemon, with its log settings)."""
    from media.worker import main as worker_main
    from switch.logs import configure

    configure(args.log_level, args.log_format)
    worker_main(args.fd, args.relay_config, args.name)
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
    migrate = sub.add_parser(
        "migrate", help="bring the store's schema up to date (the daemon does it at start too)"
    )
    migrate.add_argument("-c", "--config", type=Path, default=Path("config/softswitch.yaml"))
    worker = sub.add_parser("media-worker", help=argparse.SUPPRESS)
    worker.add_argument("fd", type=int)
    worker.add_argument("relay_config")
    worker.add_argument("name")
    worker.add_argument("--log-level", default="info")
    worker.add_argument("--log-format", default="auto")
    args = parser.parse_args(argv)
    if args.command == "media-worker":
        return _media_worker(args)
    if args.command == "check":
        return _check(args.config)
    if args.command == "migrate":
        return _migrate(args.config)
    if args.command == "run":
        return _run(args.config, args.pid_file)
    return _reload(args.pid_file)


if __name__ == "__main__":
    sys.exit(main())
