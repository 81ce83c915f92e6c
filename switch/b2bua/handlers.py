"""Built-in call handlers: what a tenant's ``routes`` can name until dialplans arrive.

Each is an ``async def (call: HandledCall) -> None`` on the call-control API
(``switch.b2bua.control``), and they are its proof from end to end:

- ``answer-hangup``: answer, keep the line open ``seconds``, hang up (normal
  clearing). A line test: the caller's RTP reaches the switch's endpoint and
  is counted.
- ``follow-me``: answer, ring ``extension`` for ``timeout`` seconds, and bridge
  the caller with whoever answers; when the bridge ends, hang up. When nobody
  answers (or the phone is busy, or not registered), hang up with that cause
  (Q.850 in the Reason header).

A caller who hangs up meanwhile ends the handler through ``CallerHungUp``,
which the call's runner expects; nothing here needs to catch it.
"""

from __future__ import annotations

from typing import assert_never

import structlog

from switch.b2bua.control import DialFailure, HandledCall, Handler
from switch.config import AnswerHangup, FollowMe, Route

log = structlog.get_logger()


def answer_hangup(route: AnswerHangup) -> Handler:
    async def handle(call: HandledCall) -> None:
        await call.answer()
        await call.sleep(route.seconds)
        await call.hangup()

    return handle


def follow_me(route: FollowMe) -> Handler:
    async def handle(call: HandledCall) -> None:
        await call.answer()
        leg = await call.dial(route.extension, timeout=route.timeout)
        if isinstance(leg, DialFailure):
            log.info("follow-me: no answer", call_id=call.id, status=leg.status,
                     cause=leg.cause.value)  # fmt: skip
            await call.hangup(leg.cause)
            return
        await call.bridge(call.caller, leg)
        await call.hangup()

    return handle


def handler_for(route: Route) -> Handler:
    """The handler a route names, with the route's settings."""
    if isinstance(route, AnswerHangup):
        return answer_hangup(route)
    if isinstance(route, FollowMe):
        return follow_me(route)
    assert_never(route)
