"""A PostgreSQL server of the tests' own, on 127.0.0.1, for the store's PostgreSQL path.

Debian's ``postgresql`` package has the programs (``.ci/run`` installs it); the server is a
new cluster in a temporary folder, started once per test session on a free port and stopped
at its end, with trust authentication for the user ``softswitch`` on loopback only. Each
test gets a database of its own. PostgreSQL refuses to run as root: when the tests run as
root, the cluster belongs to the ``postgres`` user the package made, and its programs run as
that user (``runuser``). Skipped when the programs or the driver (psycopg) are missing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import free_port

START_TIMEOUT = 30.0


def _programs() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def server() -> Iterator[str]:
    """Run a server for as long as the generator is open; yields its URL without a database."""
    programs = _programs()
    if programs is None:
        pytest.skip("PostgreSQL is not installed (Debian: postgresql)")
    pytest.importorskip("psycopg")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="softswitch-pg-"))  # not under pytest's 0700 tmp
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    subprocess.run(
        [*as_user, str(programs / "initdb"), "-D", str(data), "-A", "trust", "-U", "softswitch",
         "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [*as_user, str(programs / "postgres"), "-D", str(data), "-p", str(port),
         "-k", str(folder), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"postgresql://softswitch@127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while subprocess.run(
            [str(programs / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
            check=False, timeout=10,
        ).returncode != 0:  # fmt: skip
            if process.poll() is not None or time.monotonic() > deadline:
                said = (folder / "server.log").read_text()
                raise RuntimeError(f"PostgreSQL did not start: {said}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server_url: str) -> str:
    """A new empty database on the server: its URL."""
    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"
