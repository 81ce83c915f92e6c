"""The location service (RFC 3261 §10): the contacts each address-of-record is reachable at.

Memory is the source of truth for lookups: `bindings()` answers from a dict and never waits on
the database, so routing a call costs no I/O. A change is applied to memory at once and made
durable before `update()` returns, so the registrar answers 200 only for a binding that a
restart finds again (`load()`).

Durability is a group commit: one writer task takes every change made since its last commit,
coalesced per binding (the last change wins), and writes them in one transaction while the next
batch gathers. Under a REGISTER storm thousands of callers share a few commits instead of
queueing one each. If a transaction fails, every caller of that batch gets `BindingsNotSaved`
(the registrar answers 500) and the batch's changes are taken back out of memory, as RFC 3261
§10.3 step 7 asks after a failed back-end commit.

It does not parse REGISTER, authenticate, bound expiry or read the clock: the registrar does,
and passes `now` as wall-clock UNIX seconds, because expiry times are persisted.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Connection, Row, bindparam, delete, insert, select

from switch.store import Store, registrations

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

_Aor = tuple[str, str]  # (tenant, user)
_Key = tuple[str, str, str]  # (tenant, user, contact)

_DELETE_KEY = delete(registrations).where(
    registrations.c.tenant == bindparam("k_tenant"),
    registrations.c.user == bindparam("k_user"),
    registrations.c.contact == bindparam("k_contact"),
)


_FIELDS = tuple(column.name for column in registrations.columns)


class BindingsNotSaved(Exception):
    """The database refused a batch of binding changes; they were taken back out of memory."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """One contact of one address-of-record, as the registrar accepted it."""

    tenant: str
    user: str  # the extension
    contact: str  # the Contact URI as the phone wrote it
    expires_at: float  # UNIX seconds
    q: float | None = None
    call_id: str
    cseq: int
    transport: str  # udp / tcp / tls
    # Where the REGISTER came from: behind NAT, the only address that reaches the phone.
    source_host: str
    source_port: int
    user_agent: str | None = None
    instance: str | None = None  # +sip.instance (RFC 5626 §4.1)
    registered_at: float

    def expires_in(self, now: float) -> int:
        # Rounded up: a live binding must never report expires=0, which means "removed".
        return max(0, math.ceil(self.expires_at - now))

    def expired(self, now: float) -> bool:
        return self.expires_at <= now


@dataclass(slots=True)
class _Change:
    # What the database holds for the key before this batch. When an earlier batch is still in
    # flight this is that batch's value; if it fails, it hands its own `before` on to us.
    before: Binding | None
    after: Binding | None


def _preference(binding: Binding) -> tuple[float, float]:
    # A contact without q ranks as q=1.0, the top of the scale; ties go to the latest REGISTER.
    q = 1.0 if binding.q is None else binding.q
    return (-q, -binding.registered_at)


class LocationService:
    """Bindings per (tenant, user) in memory, made durable through a group-commit writer.

    Use: `await load(now)` once, `start()` in the running loop, then `update()`, `bindings()`
    and `expire()` (about once a second), and `close()` to flush and stop. The store belongs to
    the caller and stays open.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._aors: dict[_Aor, dict[str, Binding]] = {}
        self._per_tenant: dict[str, int] = {}
        self._total = 0
        # A min-heap of (expires_at, tenant, user, contact). A refresh pushes a new entry and
        # leaves the old one, skipped when it comes up: cheaper than finding it in the heap.
        self._deadlines: list[tuple[float, str, str, str]] = []
        self._pending: dict[_Key, _Change] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0  # transactions committed by the writer, for tests and metrics

    def bindings(self, tenant: str, user: str, now: float) -> list[Binding]:
        """The unexpired bindings of an address-of-record, highest q first, then most recent."""
        contacts = self._aors.get((tenant, user))
        if not contacts:
            return []
        return sorted((b for b in contacts.values() if not b.expired(now)), key=_preference)

    def count(self, tenant: str | None = None) -> int:
        """Bindings held (of one tenant, or all); expired ones count until `expire()` runs."""
        if tenant is None:
            return self._total
        return self._per_tenant.get(tenant, 0)

    def counts_by_tenant(self) -> dict[str, int]:
        return dict(self._per_tenant)

    async def update(
        self,
        tenant: str,
        user: str,
        upserts: list[Binding],
        removals: list[str],
        remove_all: bool = False,
    ) -> None:
        """Apply one REGISTER's changes and return once they are durable.

        Order: `remove_all` (Contact: *), then `removals` (contacts), then `upserts`. Raises
        `BindingsNotSaved` if the database refused them; they are then out of memory too, as
        are the other changes of the same batch. A caller cancelled while waiting does not
        cancel the write.
        """
        self._check_running()
        for binding in upserts:
            if (binding.tenant, binding.user) != (tenant, user):
                raise ValueError(
                    f"binding of {binding.tenant}/{binding.user} in an update of {tenant}/{user}"
                )
        changed = False
        if remove_all:
            for contact in list(self._aors.get((tenant, user), ())):
                changed |= self._change((tenant, user, contact), None)
        for contact in removals:
            changed |= self._change((tenant, user, contact), None)
        for binding in upserts:
            changed |= self._change((tenant, user, binding.contact), binding)
        if changed:
            await self._durable()

    async def load(self, now: float) -> int:
        """Read the unexpired bindings into memory, deleting expired rows; returns how many."""
        if self._aors or self._pending:
            raise RuntimeError("load() fills an empty location service, before any update")

        def read(conn: Connection) -> list[Row[Any]]:
            conn.execute(delete(registrations).where(registrations.c.expires_at <= now))
            return list(conn.execute(select(registrations)).all())

        rows = await self._store.transaction(read)
        for row in rows:
            binding = Binding(**row._asdict())
            self._put((binding.tenant, binding.user, binding.contact), binding)
        return len(rows)

    async def expire(self, now: float) -> list[Binding]:
        """Remove the bindings expired at `now` from memory and the database; return them."""
        self._check_running()
        expired: list[Binding] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, tenant, user, contact = heapq.heappop(self._deadlines)
            key = (tenant, user, contact)
            binding = self._get(key)
            if binding is not None and binding.expired(now):
                self._change(key, None)
                expired.append(binding)
        if expired:
            await self._durable()
        return expired

    def start(self) -> None:
        if self._writer is not None or self._closing:
            raise RuntimeError("the location service starts once")
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name="location-writer"
        )

    async def close(self) -> None:
        """Write what is pending, then stop the writer; later updates raise RuntimeError."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer

    def _check_running(self) -> None:
        if self._writer is None or self._closing:
            raise RuntimeError("the location service is not running (not started, or closed)")

    def _get(self, key: _Key) -> Binding | None:
        contacts = self._aors.get((key[0], key[1]))
        return None if contacts is None else contacts.get(key[2])

    def _change(self, key: _Key, after: Binding | None) -> bool:
        """Set a binding in memory and queue it for the writer; False if nothing changed."""
        before = self._get(key)
        if before is after:
            return False
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = _Change(before=before, after=after)
        else:
            pending.after = after
        self._put(key, after)
        return True

    def _put(self, key: _Key, binding: Binding | None) -> None:
        """Set a binding in memory only, keeping the counts and the deadline heap in step."""
        tenant, user, contact = key
        contacts = self._aors.get((tenant, user))
        if binding is None:
            if contacts is None or contacts.pop(contact, None) is None:
                return
            if not contacts:
                del self._aors[(tenant, user)]
            self._add_count(tenant, -1)
            return
        if contacts is None:
            contacts = self._aors[(tenant, user)] = {}
        if contacts.get(contact) is None:
            self._add_count(tenant, 1)
        contacts[contact] = binding
        self._schedule(binding)

    def _add_count(self, tenant: str, delta: int) -> None:
        self._total += delta
        left = self._per_tenant.get(tenant, 0) + delta
        if left:
            self._per_tenant[tenant] = left
        else:
            del self._per_tenant[tenant]

    def _schedule(self, binding: Binding) -> None:
        heapq.heappush(
            self._deadlines,
            (binding.expires_at, binding.tenant, binding.user, binding.contact),
        )
        # A phone refreshing far more often than its expiry leaves a stale entry per refresh;
        # rebuilding when they outnumber the live ones keeps the heap in proportion to bindings
        # at an amortised O(1) per push.
        if len(self._deadlines) > 2 * self._total + 1024:
            self._deadlines = [
                (b.expires_at, b.tenant, b.user, b.contact)
                for contacts in self._aors.values()
                for b in contacts.values()
            ]
            heapq.heapify(self._deadlines)

    async def _durable(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wakeup.set()
        await waiter

    async def _write_loop(self) -> None:
        # No timer: a batch is whatever gathered while the previous commit was on disk, so a
        # lone REGISTER waits for one commit and a storm fills each transaction.
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._pending or self._waiters:
                await self._write_batch()
            if self._closing and not (self._pending or self._waiters):
                return

    async def _write_batch(self) -> None:
        changes, self._pending = self._pending, {}
        waiters, self._waiters = self._waiters, []
        try:
            await self._commit(changes)
        except Exception as exc:
            _log.exception("location_commit_failed", changes=len(changes), callers=len(waiters))
            self._take_back(changes)
            for waiter in waiters:
                if not waiter.done():
                    error = BindingsNotSaved(f"{len(changes)} binding change(s) not saved: {exc}")
                    error.__cause__ = exc
                    waiter.set_exception(error)
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _commit(self, changes: dict[_Key, _Change]) -> None:
        effective = [(key, c.after) for key, c in changes.items() if c.after is not c.before]
        if not effective:
            return
        # Replace as delete-then-insert: one statement shape for SQLite and PostgreSQL, where
        # an upsert would need each dialect's own ON CONFLICT construct.
        keys = [{"k_tenant": t, "k_user": u, "k_contact": c} for (t, u, c), _ in effective]
        # Not dataclasses.asdict: it deep-copies every field (measured: 3 % of the daemon's CPU).
        rows = [
            {f: getattr(after, f) for f in _FIELDS} for _, after in effective if after is not None
        ]

        def write(conn: Connection) -> None:
            conn.execute(_DELETE_KEY, keys)
            if rows:
                conn.execute(insert(registrations), rows)

        await self._store.transaction(write)
        self.commits += 1

    def _take_back(self, failed: dict[_Key, _Change]) -> None:
        for key, change in failed.items():
            later = self._pending.get(key)
            if later is None:
                self._put(key, change.before)
            else:
                # Memory already shows the later change, which its own batch will write; should
                # that fail too, memory must return to what the database still holds.
                later.before = change.before
