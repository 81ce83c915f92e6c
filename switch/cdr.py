"""Call records (CDR): one row per call and one per leg, in the store's `calls` and `call_legs`.

A call's row is inserted with state 'active' when the B2BUA admits it, and rewritten whole with
state 'ended' (times, disposition, who hung up and why, the legs with their media counters) when
it ends. No call waits on the database to proceed: every write goes to one group-commit queue
(`GroupCommit`), which keeps them in order and writes all that gathered meanwhile in one
transaction (measured in bench/call_rate.py: a transaction per write cost about a third of the
daemon's CPU per call). While calls are up, a heartbeat
moves `ended_at` of their rows forward: a daemon killed mid-call leaves 'active' rows that
`recover()`, at the next start, marks 'crashed' with that last-known end. A restart so loses no
call, finished or not.

A transferred call stays one record: the caller pays for one call, and `billsec` runs from the
first answer to the end whoever talked. Each party that joined by a transfer (blind, attended,
or an INVITE with Replaces) adds leg rows with role 'target' (one per contact rung, as for the
callee), `referred_by` naming the extension that transferred. Every answered leg has the time
its party joined (`answered_at`) and left (`ended_at`), and the relay counters of its own time
in the call, so billing can split the call between the parties. An attended transfer also ends
the transferor's consultation call: that record ends with hangup cause 'transferred'.

The B2BUA says who the call is between when it admits it: `direction` is 'internal' (a phone to
an extension: caller and callee are extensions), 'inbound' (a gateway to a company number:
caller is the calling number, callee the extension, `did` the number called) or 'outbound' (a
phone to an outside number: caller is the extension, callee the E.164 number, `did` the caller
ID it was sent with). An internal call to one of the tenant's own numbers keeps that number in
`did` too. Each leg has the voice codec its phones agreed on.

A call the switch handles itself (``switch.b2bua.control``) is recorded the same way: its
answer is the switch's, so it is 'answered' and `billsec` runs from then. Its legs are the
caller's, then one per fork of each leg it dialled (role 'callee'), each with its own times and
relay counters. When the switch ends it, `hangup_cause` is the Q.850 cause it ended it with
(e.g. '19 No answer' after a follow-me nobody took).

It does not decide anything about the call: it listens to the call-control events (``CCEvent*``)
and reads the call and its relay session when the call is over. It also counts ended calls in
the metrics (RTP counters come from the relay itself, live: media.metrics). Not done here:
recordings, and telling rows of several switch nodes sharing one PostgreSQL apart at recovery.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import structlog
from sqlalchemy import Connection, bindparam, delete, insert, select, update

from media import LegStats, SessionStats
from switch.b2bua.call import (
    Call,
    CallState,
    CCEvent,
    CCEventConnect,
    CCEventDisconnect,
    CCEventFail,
    Side,
)
from switch.b2bua.control import HandledCall, Leg
from switch.b2bua.forks import Fork
from switch.b2bua.media import RelayMedia
from switch.endpoint import NO_RESPONSE, ServerRequest
from switch.metrics import Metrics
from switch.sip.errors import ParseError
from switch.sip.message import Request, random_hex
from switch.store import GroupCommit, Store, call_legs, calls
from switch.transport import Peer

log = structlog.get_logger()

HEARTBEAT_SECONDS = 5.0  # how stale the end of a crashed call's row can be


class Disposition(enum.StrEnum):
    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    CANCELLED = "cancelled"
    FAILED = "failed"


class HangupBy(enum.StrEnum):
    CALLER = "caller"
    CALLEE = "callee"
    SYSTEM = "system"


class RowState(enum.StrEnum):
    ACTIVE = "active"
    ENDED = "ended"
    CRASHED = "crashed"


def disposition(status: int, *, cancelled: bool = False) -> Disposition:
    """The disposition of a call from the final status the caller got.

    486 Busy Here and 600 Busy Everywhere are busy; 408 and 480 are what an unanswered ring
    ends in (our ring timeout answers 480 No Answer); a caller's CANCEL is cancelled whatever
    the status.
    """
    if cancelled:
        return Disposition.CANCELLED
    if 200 <= status < 300:
        return Disposition.ANSWERED
    if status in (486, 600):
        return Disposition.BUSY
    if status in (408, 480):
        return Disposition.NO_ANSWER
    return Disposition.FAILED


@dataclass(frozen=True, slots=True, kw_only=True)
class LegRecord:
    """One leg of a call: leg 0 is the caller's, then one per fork towards the callee."""

    leg: int
    role: str  # Side.value: caller / callee
    sip_call_id: str
    contact: str | None
    address: str | None  # transport:host:port the leg's signalling went to
    local_tag: str | None
    remote_tag: str | None
    status: int | None  # the final response on this leg, if any
    answered: bool
    codec: str | None = None
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    lost: int = 0
    jitter_ms: float = 0.0
    latched: str | None = None  # where the relay sent this phone's RTP
    referred_by: str | None = None  # role 'target': the extension that transferred
    answered_at: float | None = None  # when this leg's party was in the call, if it was
    ended_at: float | None = None
    kernel_packets: int = 0  # of packets_in, forwarded by the kernel (media.kernel)

    def with_media(self, stats: LegStats, since: LegStats | None = None) -> LegRecord:
        """The relay counters of ``stats``, less those of ``since`` (what came before)."""
        latched = None if stats.latched is None else f"{stats.latched[0]}:{stats.latched[1]}"
        return replace(
            self,
            packets_in=stats.packets_in - (since.packets_in if since else 0),
            bytes_in=stats.bytes_in - (since.bytes_in if since else 0),
            packets_out=max(0, stats.packets_out - (since.packets_out if since else 0)),
            bytes_out=max(0, stats.bytes_out - (since.bytes_out if since else 0)),
            lost=max(0, stats.lost - (since.lost if since else 0)),
            jitter_ms=round(stats.jitter_ms, 3),
            latched=latched,
            kernel_packets=stats.kernel_packets - (since.kernel_packets if since else 0),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """A call's row in `calls`, with its legs."""

    call_id: str
    tenant: str
    caller: str
    callee: str
    did: str | None = None
    direction: str = "internal"
    started_at: float
    answered_at: float | None = None
    ended_at: float | None = None
    disposition: Disposition | None = None
    hangup_by: HangupBy | None = None
    hangup_cause: str | None = None
    state: RowState = RowState.ACTIVE
    recording: str | None = None  # the WAV of a recorded bridge
    recording_seconds: float | None = None
    legs: tuple[LegRecord, ...] = ()

    @property
    def duration(self) -> int:
        return 0 if self.ended_at is None else round(self.ended_at - self.started_at)

    @property
    def billsec(self) -> int:
        if self.ended_at is None or self.answered_at is None:
            return 0
        return round(self.ended_at - self.answered_at)

    def row(self) -> dict[str, Any]:
        """The values of the `calls` row (without the legs)."""
        return {
            "call_id": self.call_id,
            "tenant": self.tenant,
            "caller": self.caller,
            "callee": self.callee,
            "did": self.did,
            "direction": self.direction,
            "started_at": self.started_at,
            "answered_at": self.answered_at,
            # An active call's row ends where it was last seen alive: at its start, for now.
            "ended_at": self.started_at if self.ended_at is None else self.ended_at,
            "duration": self.duration,
            "billsec": self.billsec,
            "disposition": None if self.disposition is None else self.disposition.value,
            "hangup_by": None if self.hangup_by is None else self.hangup_by.value,
            "hangup_cause": self.hangup_cause,
            "state": self.state.value,
            "recording": self.recording,
            "recording_seconds": self.recording_seconds,
        }


@dataclass
class _Open:
    """What the recorder knows of a call that is not over yet."""

    record: CallRecord
    media_timeout: bool = False
    answered_at: float | None = None


class CallRecorder:
    """Writes the record of every call the B2BUA reports; counts ended calls in the metrics.

    Use: `await recover()` once at start, `begin()` for each admitted call before it starts,
    `on_event()` with its call-control events, `heartbeat()` about once a second, and
    `await close()` to flush the writes in flight. The store belongs to the caller.
    """

    def __init__(
        self, store: Store, metrics: Metrics, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._open: dict[Call | HandledCall, _Open] = {}
        self._writes = GroupCommit(store)
        self._last_beat = 0.0
        # Media in worker processes (media.workers): their final counters are on the way when
        # a call ends; this waits for them before the record is built.
        self.settle: Callable[[str], Awaitable[None]] | None = None
        self._settling: set[asyncio.Future[None]] = set()
        for value in Disposition:  # every series exists from the start, at 0
            self.metrics.calls_total.labels(value.value)

    async def recover(self) -> int:
        """Mark the calls a previous run left active as crashed; return how many."""
        return await self.store.transaction(_mark_crashed)

    def begin(
        self,
        call: Call | HandledCall,
        *,
        tenant: str,
        caller: str,
        callee: str,
        did: str | None = None,
        direction: str = "internal",
    ) -> None:
        record = CallRecord(
            call_id=random_hex(12),
            tenant=tenant,
            caller=caller,
            callee=callee,
            did=did,
            direction=direction,
            started_at=self.clock(),
        )
        entry = _Open(record)
        self._open[call] = entry
        row = record.row()
        self._write(lambda conn: _insert(conn, row), record.call_id)

    def media_timeout(self, sip_call_id: str) -> None:
        for call, entry in self._open.items():
            if call.id == sip_call_id:
                entry.media_timeout = True

    def on_event(self, call: Call | HandledCall, event: CCEvent) -> None:
        entry = self._open.get(call)
        if entry is None:
            return
        if isinstance(event, CCEventConnect):
            answered_at = entry.answered_at = self.clock()
            params = {"k_call_id": entry.record.call_id, "answered_at": answered_at,
                      "ended_at": answered_at}  # fmt: skip
            self._write(lambda conn: conn.execute(_UPDATE_CALL, params), entry.record.call_id)
        elif isinstance(event, CCEventFail | CCEventDisconnect):
            del self._open[call]
            ended_at = self.clock()
            # The call closes its media right after this event: read the counters after that.
            finish = functools.partial(self._finish, call, entry, event, ended_at)
            if self.settle is None:
                asyncio.get_running_loop().call_soon(finish)
            else:
                settled = asyncio.ensure_future(self._settled(call.id, finish))
                self._settling.add(settled)
                settled.add_done_callback(self._settling.discard)

    async def heartbeat(self) -> None:
        """Move the end of the active calls' rows to now, at most every HEARTBEAT_SECONDS."""
        now = self.clock()
        if not self._open or now - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = now
        # Queued after the calls' own writes: a row still on its way in gets the update too.
        ids = [entry.record.call_id for entry in self._open.values()]
        statement = (
            update(calls)
            .where(calls.c.call_id.in_(ids), calls.c.state == RowState.ACTIVE.value)
            .values(ended_at=now)
        )
        await self._writes.submit(lambda conn: conn.execute(statement))

    async def close(self) -> None:
        """Wait for every write in flight. Calls still up stay 'active' for `recover()`."""
        await asyncio.sleep(0)  # final writes scheduled by the last events
        if self._settling:
            await asyncio.wait(self._settling)
        await self._writes.flush()

    async def _settled(self, call_id: str, finish: Callable[[], None]) -> None:
        await asyncio.sleep(0)  # the call closes its media after this event
        assert self.settle is not None
        await self.settle(call_id)
        finish()

    def _finish(
        self,
        call: Call | HandledCall,
        entry: _Open,
        event: CCEventFail | CCEventDisconnect,
        ended_at: float,
    ) -> None:
        record = finished(call, entry.record, event, entry.answered_at, ended_at,
                          entry.media_timeout)  # fmt: skip
        self._count(record)
        # A failed earlier write is logged already, and this one inserts the row if need be.
        written = self._write(lambda conn: _write_final(conn, record), record.call_id)

        def recorded(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                log.info("call recorded", call_id=call.id, record=record.call_id,
                         disposition=str(record.disposition), duration=record.duration,
                         billsec=record.billsec)  # fmt: skip

        written.add_done_callback(recorded)

    def _count(self, record: CallRecord) -> None:
        assert record.disposition is not None
        self.metrics.calls_total.labels(record.disposition.value).inc()

    def _write(self, work: Callable[[Connection], Any], record: str) -> asyncio.Future[Any]:
        """Queue `work` for the store; a failure is logged, and the call goes on (its final
        write inserts the row if the first one failed)."""
        future = self._writes.submit(work)

        def logged(done: asyncio.Future[Any]) -> None:
            error = None if done.cancelled() else done.exception()
            if error is not None:
                log.error("writing a call record failed", record=record, exc_info=error)

        future.add_done_callback(logged)
        return future


def finished(
    call: Call | HandledCall,
    record: CallRecord,
    event: CCEventFail | CCEventDisconnect,
    answered_at: float | None,
    ended_at: float,
    media_timeout: bool = False,
) -> CallRecord:
    """The final record of `call`, which just reported `event`."""
    if isinstance(call, HandledCall):
        legs = _handled_legs(call, ended_at)
    else:
        legs = _legs(call, answered_at, ended_at)
    if isinstance(event, CCEventDisconnect):
        result = Disposition.ANSWERED
        by = HangupBy.SYSTEM if event.by is None else HangupBy(event.by.value)
        ours = call.caller.hangup_info if isinstance(call, HandledCall) else None
        if event.transferred:
            cause = "transferred"
        elif event.by is not None:
            cause = "BYE"
        elif media_timeout:
            cause = "media timeout"
        elif ours is not None and not ours.by_phone:
            cause = f"{ours.cause.value} {ours.cause.text}"
        else:
            cause = "ended by the switch"
    else:
        if isinstance(call, HandledCall):
            cancelled, forks = call.cancelled, []
        else:
            cancelled, forks = call.state is CallState.CANCELLED, call.forks
        result = disposition(event.status, cancelled=cancelled)
        if cancelled:
            by = HangupBy.CALLER
        elif any(f.final == event.status and f.reason != NO_RESPONSE for f in forks):
            by = HangupBy.CALLEE  # its phone said so (a 408 of our Timer B is ours)
        else:
            by = HangupBy.SYSTEM
        cause = f"{event.status} {event.reason}".strip()
    recording = call.recording if isinstance(call, HandledCall) else None
    return replace(
        record,
        recording=None if recording is None else str(recording.path),
        recording_seconds=None if recording is None else round(recording.duration, 2),
        answered_at=answered_at,
        ended_at=ended_at,
        disposition=result,
        hangup_by=by,
        hangup_cause=cause[:200],
        state=RowState.ENDED,
        legs=legs,
    )


def _legs(call: Call, answered_at: float | None, ended_at: float) -> tuple[LegRecord, ...]:
    status = 200 if answered_at is not None else None
    caller = _caller_leg(call.incoming, status)
    legs = [replace(caller, answered=status == 200, codec=call.media.codec)]
    winner = call.answered_by
    won_index = 0
    for n, fork in enumerate(call.forks, start=1):
        record = _fork_leg(n, fork)
        if winner is not None and winner.id.call_id == record.sip_call_id:
            won_index = n
            record = replace(record, remote_tag=winner.id.remote_tag, answered=True,
                             codec=call.media.codec)  # fmt: skip
        legs.append(record)
    # Who was on each side, in turn: (leg index, joined at, counters before it joined).
    turns: dict[Side, list[tuple[int, float | None, LegStats | None]]] = {
        Side.A: [(0, answered_at, None)] if status == 200 else [],
        Side.B: [(won_index, answered_at, None)] if won_index else [],
    }
    ends: dict[Side, list[tuple[float | None, LegStats | None]]] = {Side.A: [], Side.B: []}
    for transfer in call.transfers:
        if transfer.status == 200:
            ends[transfer.side].append((transfer.joined_at, transfer.replaced))
        for target in transfer.targets():
            answered = target.status == 200 and transfer.status == 200
            legs.append(
                LegRecord(
                    leg=len(legs),
                    role="target",
                    sip_call_id=target.sip_call_id,
                    contact=target.contact,
                    address=None if target.peer is None else _address(target.peer),
                    local_tag=None,
                    remote_tag=None,
                    status=target.status,
                    answered=answered,
                    referred_by=transfer.by,
                )
            )
            if answered:
                turns[transfer.side].append((len(legs) - 1, transfer.joined_at, transfer.before))
    stats: SessionStats | None = None
    if isinstance(call.media, RelayMedia):
        stats = call.media.session.stats()
    for side, occupants in turns.items():
        final = None if stats is None else (stats.a if side is Side.A else stats.b)
        for i, (index, joined, before) in enumerate(occupants):
            left, after = ends[side][i] if i < len(ends[side]) else (ended_at, final)
            leg = replace(legs[index], answered_at=joined, ended_at=left)
            legs[index] = leg if after is None else leg.with_media(after, before)
    return tuple(legs)


def _handled_legs(call: HandledCall, ended_at: float) -> tuple[LegRecord, ...]:
    """The caller's leg, then each fork of each leg the switch dialled for it."""
    caller, final = call.caller, call.caller.final
    first = _caller_leg(caller.incoming, final.status if final is not None else None)
    legs = [_with_leg(first, caller, ended_at)]
    for attempt in call.attempts:
        won = attempt.leg.dialog if attempt.leg is not None else None
        for fork in attempt.forks:
            record = _fork_leg(len(legs), fork)
            if attempt.leg is not None and won is not None and won.call_id == record.sip_call_id:
                record = replace(record, remote_tag=won.id.remote_tag)
                record = _with_leg(record, attempt.leg, ended_at)
            legs.append(record)
    return tuple(legs)


def _caller_leg(incoming: ServerRequest, status: int | None) -> LegRecord:
    """Leg 0, the caller's INVITE, as it came in (not answered yet)."""
    request = incoming.request
    return LegRecord(
        leg=0,
        role=Side.A.value,
        sip_call_id=request.call_id,
        contact=_contact(request),
        address=_address(incoming.peer),
        local_tag=incoming.to_tag,
        remote_tag=request.from_.tag,
        status=status,
        answered=False,
    )


def _fork_leg(n: int, fork: Fork) -> LegRecord:
    """Leg ``n``, one INVITE towards the callee, as sent (not answered)."""
    return LegRecord(
        leg=n,
        role=Side.B.value,
        sip_call_id=fork.request.call_id,
        contact=fork.target.uri,
        address=_address(fork.target.peer),
        local_tag=fork.request.from_.tag,
        remote_tag=None,
        # A fork we CANCELled whose 487 (§9.2) had not come when the call ended: the record
        # is written then, and says what the CANCEL brings rather than nothing.
        status=fork.final if fork.final is not None or not fork.cancelled else 487,
        answered=False,
    )


def _with_leg(record: LegRecord, leg: Leg, ended_at: float) -> LegRecord:
    """``record`` of an answered ``leg``: its times, codec and relay counters."""
    if leg.answered_at is None:
        return record
    record = replace(record, answered=True, codec=leg.codec, answered_at=leg.answered_at,
                     ended_at=leg.ended_at or ended_at)  # fmt: skip
    return record if leg.media is None else record.with_media(leg.media.stats())


def _address(peer: Peer) -> str:
    return f"{peer.transport}:{peer.host}:{peer.port}"


def _contact(request: Request) -> str | None:
    try:
        contacts = request.contacts
    except ParseError:  # the call went on without it; the record does too
        return None
    address = contacts[0].address if contacts else None
    return None if address is None else str(address.uri)


# The statements of every call, built once: a statement built per call with its values in it
# cost SQLAlchemy more than the database's own work (cache keys, coercing each value). SET takes
# the columns the parameters name; "k_" keys select the row.
_INSERT_CALL = insert(calls)
_UPDATE_CALL = update(calls).where(calls.c.call_id == bindparam("k_call_id"))
_DELETE_LEGS = delete(call_legs).where(call_legs.c.call_id == bindparam("k_call_id"))
_INSERT_LEGS = insert(call_legs)
_LEG_FIELDS = tuple(f.name for f in fields(LegRecord))


def _insert(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(_INSERT_CALL, row)


def _write_final(conn: Connection, record: CallRecord) -> None:
    row = record.row()
    call_id = row.pop("call_id")
    done = conn.execute(_UPDATE_CALL, {"k_call_id": call_id, **row})
    if done.rowcount == 0:
        conn.execute(_INSERT_CALL, {"call_id": call_id, **row})
    conn.execute(_DELETE_LEGS, {"k_call_id": call_id})
    if record.legs:
        rows = [
            {"call_id": call_id, **{name: getattr(leg, name) for name in _LEG_FIELDS}}
            for leg in record.legs
        ]
        conn.execute(_INSERT_LEGS, rows)


def _mark_crashed(conn: Connection) -> int:
    active = conn.execute(select(calls).where(calls.c.state == RowState.ACTIVE.value)).all()
    for row in active:
        ended_at = max(row.ended_at or row.started_at, row.answered_at or row.started_at)
        answered = row.answered_at is not None
        conn.execute(
            update(calls)
            .where(calls.c.call_id == row.call_id)
            .values(
                state=RowState.CRASHED.value,
                ended_at=ended_at,
                duration=round(ended_at - row.started_at),
                billsec=round(ended_at - row.answered_at) if answered else 0,
                disposition=(Disposition.ANSWERED if answered else Disposition.FAILED).value,
                hangup_by=HangupBy.SYSTEM.value,
                hangup_cause="switch stopped during the call",
            )
        )
    return len(active)
