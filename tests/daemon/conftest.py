"""Fixtures for the daemon suite: a real softswitch per test, on loopback ports of its own.

`daemon` is started with the test configuration (harness.base_config) and
stopped at the end with SIGTERM, asserting exit code 0 and a log free of
tracebacks. `make_daemon(edit)` builds one from a changed configuration
(TLS listener, another algorithm order) for the tests that need it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.baresip_phone import Phones, phones_for
from tests.daemon.harness import MEDIA_WORKERS, Daemon, base_config, free_port

ConfigEdit = Callable[[dict[str, Any]], None]


def _check_clean_exit(daemon: Daemon) -> None:
    if daemon.running:
        daemon.stop()
    log = daemon.log
    assert "Traceback" not in log, f"the daemon logged a traceback:\n{log[-5000:]}"
    assert '"handler failed"' not in log, f"a handler raised:\n{log[-5000:]}"


@pytest.fixture
def media_workers() -> int:
    """Media worker processes of the daemons a test starts (0: media in the daemon's own
    process, or what SOFTSWITCH_TEST_MEDIA_WORKERS says). Tests marked ``both_media_ways``
    run twice: media in the daemon, and in two workers."""
    return MEDIA_WORKERS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker("both_media_ways") is not None
    if marked and "media_workers" in metafunc.fixturenames:
        metafunc.parametrize("media_workers", [0, 2], ids=["media-in-process", "media-workers"])


@pytest.fixture
def make_daemon(tmp_path: Path, media_workers: int) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(edit: ConfigEdit | None = None, *, start: bool = True) -> Daemon:
        folder = tmp_path / f"daemon{len(started)}"
        folder.mkdir()
        config = base_config(folder, free_port(both=True), free_port())
        if media_workers:
            config.setdefault("media", {})["workers"] = media_workers
        if edit is not None:
            edit(config)
        daemon = Daemon(folder, config)
        started.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    try:
        for daemon in started:
            if daemon.process is not None:
                _check_clean_exit(daemon)
    finally:
        for daemon in started:
            daemon.kill()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder for sipp's statistics, error traces and injection files."""
    folder = tmp_path / "sipp"
    folder.mkdir()
    return folder


@pytest.fixture
def baresip(tmp_path: Path) -> Iterator[Phones]:
    """baresip phones (tests/daemon/baresip_phone.py), killed at the end if still running."""
    yield from phones_for(tmp_path)


def require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
