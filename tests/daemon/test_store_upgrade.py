"""An operator upgrades in place: the daemon starts on a store an older version made.

The store is the one commit 83d1ab8 made (tests/test_migrations.py), with a
finished call and a registration in it and no alembic_version. The daemon
must migrate it at start, keep the old call as it was, and record a new call
with the columns added since (each answered leg's answered_at/ended_at, the
call's recording and its length).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.daemon.harness import Daemon
from tests.daemon.test_calls import call, call_legs, callee, ok, records, register_callee
from tests.test_migrations import old_database, rows


def test_the_daemon_migrates_an_old_store_and_keeps_its_calls(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    daemon = make_daemon(start=False)
    path = Path(daemon.config["store"]["url"].removeprefix("sqlite:///"))
    old_database(path)
    old_call = rows(path, "SELECT * FROM calls")
    old_legs = rows(path, "SELECT * FROM call_legs ORDER BY leg")
    daemon.start()
    steps = [event["step"] for event in daemon.events_named("schema migrated")]
    added = "added referred_by, answered_at, ended_at"
    assert f"adopted table call_legs made before migrations: {added}" in steps, steps
    assert "added calls.recording_seconds" in steps, steps  # revision 0002
    assert "added call_legs.kernel_packets" in steps, steps  # revision 0003
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_answer.xml", port) as uas:
        caller = call(daemon, work, "call_uac_bye.xml")
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    before, new = records(daemon, count=2)
    assert [before] == [{**row, "recording_seconds": None} for row in old_call]
    legs = call_legs(daemon, "old-call")
    assert legs == [{**leg, "referred_by": None, "answered_at": None, "ended_at": None,
                     "kernel_packets": 0} for leg in old_legs]  # fmt: skip
    assert new["disposition"] == "answered"
    answered = [leg for leg in call_legs(daemon, new["call_id"]) if leg["answered"]]
    assert [leg["role"] for leg in answered] == ["caller", "callee"]
    for leg in answered:
        assert new["started_at"] <= leg["answered_at"] <= leg["ended_at"], leg
    # The next start finds nothing to do.
    daemon.restart()
    assert len(daemon.events_named("schema migrated")) == len(steps)
