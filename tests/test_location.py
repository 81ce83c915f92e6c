"""Location service: lookups, expiry, durability across a restart, group commit, DB failures."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from switch.location import Binding, BindingsNotSaved, LocationService
from switch.store import Store, open_store, registrations

NOW = 1_700_000_000.0


def binding(contact: str = "sip:101@192.168.1.20:5060", **fields: Any) -> Binding:
    values: dict[str, Any] = {
        "tenant": "acme",
        "user": "101",
        "contact": contact,
        "expires_at": NOW + 3600,
        "call_id": "a84b4c76e66710@pc33",
        "cseq": 1,
        "transport": "udp",
        "source_host": "203.0.113.7",
        "source_port": 41234,
        "user_agent": "Yealink SIP-T46U",
        "registered_at": NOW,
    }
    values.update(fields)
    return Binding(**values)


async def register(service: LocationService, *bindings: Binding) -> None:
    await service.update(bindings[0].tenant, bindings[0].user, list(bindings), [])


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "softswitch.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{db_path}")
    yield opened
    await opened.close()


@pytest.fixture
async def service(store: Store) -> AsyncIterator[LocationService]:
    location = LocationService(store)
    await location.load(NOW)
    location.start()
    yield location
    await location.close()


async def restarted(db_path: Path, now: float) -> tuple[Store, LocationService]:
    store = await open_store(f"sqlite:///{db_path}")
    location = LocationService(store)
    await location.load(now)
    location.start()
    return store, location


async def stop(store: Store, location: LocationService) -> None:
    await location.close()
    await store.close()


async def row_count(store: Store) -> int:
    return await store.transaction(
        lambda conn: conn.execute(select(func.count()).select_from(registrations)).scalar_one()
    )


async def test_open_store_creates_folders_for_a_relative_path_and_uses_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await open_store("sqlite:///data/pbx/softswitch.db")
    try:
        assert (tmp_path / "data" / "pbx" / "softswitch.db").is_file()
        pragmas = await store.transaction(
            lambda conn: (
                conn.execute(text("PRAGMA journal_mode")).scalar(),
                conn.execute(text("PRAGMA synchronous")).scalar(),
            )
        )
        assert pragmas == ("wal", 1)  # synchronous=NORMAL
        assert "registrations" in store.metadata.tables
    finally:
        await store.close()


async def test_lookup_orders_by_q_then_most_recent(service: LocationService) -> None:
    desk = binding("sip:101@10.0.0.5", q=0.5, registered_at=NOW - 10)
    soft = binding("sip:101@10.0.0.6", q=None, registered_at=NOW - 20)
    mobile = binding("sip:101@10.0.0.7", q=1.0, registered_at=NOW - 5)
    old_low = binding("sip:101@10.0.0.8", q=0.1, registered_at=NOW - 1)
    await register(service, desk, soft, mobile, old_low)

    assert service.bindings("acme", "101", NOW) == [mobile, soft, desk, old_low]
    assert service.bindings("acme", "102", NOW) == []
    assert service.bindings("other", "101", NOW) == []


async def test_refresh_replaces_the_binding_of_the_same_contact(service: LocationService) -> None:
    await register(service, binding(cseq=1))
    await register(service, binding(cseq=2, expires_at=NOW + 7200))

    [current] = service.bindings("acme", "101", NOW)
    assert current.cseq == 2
    assert current.expires_in(NOW) == 7200
    assert service.count() == 1


async def test_expired_bindings_are_hidden_then_removed_by_expire(
    service: LocationService, store: Store
) -> None:
    short = binding("sip:101@10.0.0.5", expires_at=NOW + 60)
    long = binding("sip:101@10.0.0.6", expires_at=NOW + 3600)
    await register(service, short, long)

    assert service.bindings("acme", "101", NOW + 60) == [long]
    assert short.expires_in(NOW + 59.5) == 1
    assert short.expires_in(NOW + 61) == 0
    assert await service.expire(NOW + 59) == []
    assert await service.expire(NOW + 60) == [short]
    assert service.count() == 1
    assert await row_count(store) == 1
    assert await service.expire(NOW + 61) == []


async def test_refresh_before_expiry_survives_the_old_deadline(service: LocationService) -> None:
    await register(service, binding(expires_at=NOW + 60))
    await register(service, binding(expires_at=NOW + 120, cseq=2))

    assert await service.expire(NOW + 90) == []
    assert [b.cseq for b in service.bindings("acme", "101", NOW + 90)] == [2]


async def test_remove_one_contact_and_remove_all(service: LocationService, store: Store) -> None:
    desk = binding("sip:101@10.0.0.5")
    soft = binding("sip:101@10.0.0.6")
    mobile = binding("sip:101@10.0.0.7")
    await register(service, desk, soft, mobile)
    await register(service, binding(user="102"))

    await service.update("acme", "101", [], ["sip:101@10.0.0.6", "sip:101@10.0.0.99"])
    assert {b.contact for b in service.bindings("acme", "101", NOW)} == {
        desk.contact,
        mobile.contact,
    }

    await service.update("acme", "101", [], [], remove_all=True)
    assert service.bindings("acme", "101", NOW) == []
    assert service.count() == 1
    assert await row_count(store) == 1


async def test_counts_by_tenant(service: LocationService) -> None:
    await register(service, binding("sip:101@10.0.0.5"), binding("sip:101@10.0.0.6"))
    await register(service, binding(tenant="globex", user="200"))

    assert service.counts_by_tenant() == {"acme": 2, "globex": 1}
    assert service.count("acme") == 2
    assert service.count("initech") == 0
    await service.update("globex", "200", [], [], remove_all=True)
    assert service.counts_by_tenant() == {"acme": 2}


async def test_update_refuses_a_binding_of_another_user(service: LocationService) -> None:
    with pytest.raises(ValueError, match="acme/102"):
        await service.update("acme", "101", [binding(user="102")], [])
    assert service.count() == 0


async def test_restart_keeps_bindings(db_path: Path) -> None:
    store, location = await restarted(db_path, NOW)
    desk = binding("sip:101@10.0.0.5", q=0.7, instance='"<urn:uuid:f81d4fae>"')
    soft = binding("sip:101@10.0.0.6", transport="tls", user_agent=None)
    other = binding(tenant="globex", user="200")
    await register(location, desk, soft)
    await register(location, other)
    await stop(store, location)

    store, location = await restarted(db_path, NOW + 30)
    try:
        assert location.bindings("acme", "101", NOW + 30) == [soft, desk]
        assert location.bindings("globex", "200", NOW + 30) == [other]
        assert location.counts_by_tenant() == {"acme": 2, "globex": 1}
    finally:
        await stop(store, location)


async def test_expired_rows_are_not_loaded_and_are_deleted(db_path: Path) -> None:
    store, location = await restarted(db_path, NOW)
    await register(location, binding("sip:101@10.0.0.5", expires_at=NOW + 60))
    await register(location, binding("sip:101@10.0.0.6", expires_at=NOW + 3600))
    await stop(store, location)

    store, location = await restarted(db_path, NOW + 60)
    try:
        assert [b.contact for b in location.bindings("acme", "101", NOW + 60)] == [
            "sip:101@10.0.0.6"
        ]
        assert location.count() == 1
        assert await row_count(store) == 1
    finally:
        await stop(store, location)


async def test_concurrent_updates_share_few_commits(db_path: Path) -> None:
    store, location = await restarted(db_path, NOW)
    users = [str(1000 + n) for n in range(500)]
    await asyncio.gather(*(register(location, binding(user=user)) for user in users))

    assert location.count() == 500
    assert location.commits <= 5
    await stop(store, location)

    store, location = await restarted(db_path, NOW)
    try:
        assert location.count() == 500
    finally:
        await stop(store, location)


async def test_changes_of_one_binding_within_a_batch_coalesce_last_wins(db_path: Path) -> None:
    store, location = await restarted(db_path, NOW)
    await asyncio.gather(*(register(location, binding(cseq=cseq)) for cseq in (1, 2, 3)))
    await asyncio.gather(
        register(location, binding("sip:101@10.0.0.9")),
        location.update("acme", "101", [], ["sip:101@10.0.0.9"]),
    )
    await stop(store, location)

    store, location = await restarted(db_path, NOW)
    try:
        assert [(b.contact, b.cseq) for b in location.bindings("acme", "101", NOW)] == [
            ("sip:101@192.168.1.20:5060", 3)
        ]
    finally:
        await stop(store, location)


async def refuse_poison(store: Store) -> None:
    """Make the database refuse any row whose user agent is 'poison', as a failing disk would."""
    await store.transaction(
        lambda conn: conn.execute(
            text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON registrations "
                "WHEN NEW.user_agent = 'poison' BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
            )
        )
    )


async def test_failed_commit_raises_to_every_caller_of_the_batch_and_is_taken_back(
    db_path: Path,
) -> None:
    store, location = await restarted(db_path, NOW)
    await refuse_poison(store)
    good = binding(cseq=1)
    await register(location, good)

    refresh, other = await asyncio.gather(
        register(location, binding(cseq=2, user_agent="poison")),
        register(location, binding(user="102")),
        return_exceptions=True,
    )
    assert isinstance(refresh, BindingsNotSaved)
    assert isinstance(other, BindingsNotSaved)
    assert location.bindings("acme", "101", NOW) == [good]
    assert location.bindings("acme", "102", NOW) == []
    assert location.count() == 1

    later = binding(user="102", cseq=5)
    await register(location, later)
    await stop(store, location)

    store, location = await restarted(db_path, NOW)
    try:
        assert location.bindings("acme", "101", NOW) == [good]
        assert location.bindings("acme", "102", NOW) == [later]
    finally:
        await stop(store, location)


@pytest.mark.parametrize(
    ("next_agent", "survivor"),
    [("Yealink SIP-T46U", 3), ("poison", 1)],
    ids=["later-change-kept", "both-fail-back-to-disk"],
)
async def test_failed_batch_and_a_later_change_of_the_same_binding(
    db_path: Path, next_agent: str, survivor: int
) -> None:
    store, location = await restarted(db_path, NOW)
    await refuse_poison(store)
    await register(location, binding(cseq=1))

    # Hold the write lock so the poisoned batch is in flight while the next change arrives.
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    poisoned = asyncio.create_task(register(location, binding(cseq=2, user_agent="poison")))
    await asyncio.sleep(0.1)
    following = asyncio.create_task(register(location, binding(cseq=3, user_agent=next_agent)))
    await asyncio.sleep(0)
    assert [b.cseq for b in location.bindings("acme", "101", NOW)] == [3]
    blocker.execute("ROLLBACK")
    blocker.close()

    with pytest.raises(BindingsNotSaved):
        await poisoned
    if next_agent == "poison":
        with pytest.raises(BindingsNotSaved):
            await following
    else:
        await following
    assert [b.cseq for b in location.bindings("acme", "101", NOW)] == [survivor]
    await stop(store, location)

    store, location = await restarted(db_path, NOW)
    try:
        assert [b.cseq for b in location.bindings("acme", "101", NOW)] == [survivor]
    finally:
        await stop(store, location)


async def test_close_flushes_and_later_updates_are_refused(db_path: Path) -> None:
    store, location = await restarted(db_path, NOW)
    pending = asyncio.create_task(register(location, binding()))
    await asyncio.sleep(0)
    await location.close()
    await pending
    with pytest.raises(RuntimeError):
        await register(location, binding(user="102"))
    assert await row_count(store) == 1
    await store.close()


async def test_update_needs_a_started_service(store: Store) -> None:
    with pytest.raises(RuntimeError):
        await register(LocationService(store), binding())
