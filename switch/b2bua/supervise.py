"""Supervisors on live calls: listen to, whisper to, or barge into the call of an extension.

A bridge the media engine mixes (``HandledCall.bridge`` through the engine) is a
``LiveBridge``: its conference (``media.mixer.Conference``) and the engine rows of its legs
by the tenant's extension on each (the extension dialled, or the one calling).
``Bridges``, owned by the B2BUA service, indexes the live ones by (tenant, extension).
``join`` puts a supervisor's leg (the caller of a ``supervise`` call) into the bridge of the
agent's extension, speaking in the supervisor's mode:

- listen: hears both parties, heard by nobody (``Mode.LISTEN``);
- whisper: heard by the agent only (``Mode.WHISPER`` to the agent's row);
- barge: heard by both, and hears both (``Mode.FULL``).

It lasts until the supervisor hangs up or the bridge ends. A bridge in the relay (two
phones with the same codec, ``RelaySession.join``) has no mix to join: a tenant with a
supervise route has its bridges made in the engine instead (``Tenant.supervised``).

With media workers, a supervisor's endpoint moves to the worker that mixes the bridge
(``HandledCall.move_endpoint``). Not done here: basic calls between phones
(``switch.b2bua.call``: relayed, no engine), moving an existing relay bridge onto the
engine, changing mode mid-call by keys, a limit on supervisors per call, telling the agent
that someone listens.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import structlog

from media.api import ConferenceLike
from media.mixer import Mode

if TYPE_CHECKING:
    from switch.b2bua.control import HandledCall

log = structlog.get_logger()

SuperviseMode = Literal["listen", "whisper", "barge"]
_MIXER_MODE: dict[SuperviseMode, Mode] = {
    "listen": Mode.LISTEN,
    "whisper": Mode.WHISPER,
    "barge": Mode.FULL,
}


@dataclass(eq=False)
class LiveBridge:
    """A bridge of two legs in the engine's mixer, as a supervisor finds it."""

    call_id: str
    tenant: str
    mix: ConferenceLike
    rows: dict[str, int]  # the tenant's extension on a leg -> that leg's endpoint row
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class Bridges:
    """The live engine bridges of every tenant, by (tenant, extension)."""

    def __init__(self) -> None:
        self._by_extension: dict[tuple[str, str], LiveBridge] = {}

    def __len__(self) -> int:
        return len(set(self._by_extension.values()))

    def add(self, bridge: LiveBridge) -> None:
        for extension in bridge.rows:
            self._by_extension[(bridge.tenant, extension)] = bridge

    def remove(self, bridge: LiveBridge) -> None:
        """The bridge ended: forget it and let its supervisors go."""
        for extension in bridge.rows:
            if self._by_extension.get((bridge.tenant, extension)) is bridge:
                del self._by_extension[(bridge.tenant, extension)]
        bridge.ended.set()

    def find(self, tenant: str, extension: str) -> LiveBridge | None:
        return self._by_extension.get((tenant, extension))


async def join(call: HandledCall, extension: str, mode: SuperviseMode) -> bool:
    """Put ``call``'s caller into the live bridge of ``extension`` of its tenant, in
    ``mode``, until either ends; False at once when that extension is in no such bridge."""
    bridge = call.switchboard.bridges.find(call.tenant, extension)
    if bridge is None:
        log.info("nothing to supervise", call_id=call.id, extension=extension)
        return False
    row = call.caller.endpoint("supervise").row
    if not call.engine.near(row, bridge.mix):  # media workers: go where the bridge is mixed
        row = call.move_endpoint(call.caller, bridge.mix).row
    agent = bridge.rows[extension]
    bridge.mix.add(row, _MIXER_MODE[mode], to=agent if mode == "whisper" else None)
    log.info("supervising", call_id=call.id, extension=extension, mode=mode,
             supervised=bridge.call_id)  # fmt: skip
    try:
        await call.guard(bridge.ended.wait())
    finally:
        bridge.mix.remove(row)
    return True
