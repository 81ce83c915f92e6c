"""Built-in call handlers: what a tenant's ``routes`` can name until dialplans arrive.

Each is an ``async def (call: HandledCall) -> None`` on the call-control API
(``switch.b2bua.control``), and they are its proof from end to end:

- ``answer-hangup``: answer, keep the line open ``seconds``, hang up (normal
  clearing). A line test: the caller's RTP reaches the switch's endpoint and
  is counted.
- ``follow-me``: answer, ring ``extension`` for ``timeout`` seconds, and bridge
  the caller with whoever answers (recorded, with ``record``); when the bridge
  ends, hang up. When nobody answers (or the phone is busy, or not
  registered), hang up with that cause (Q.850 in the Reason header).
- ``prompt``: answer, play the prompts, hang up (a greeting line, a test of
  the media engine's playback).
- ``menu``: a one-level voice menu: a prompt, a choice by DTMF, the chosen
  extension rung and bridged; a wrong key or none is told and asked again.
- ``voicemail``: the voicemail prompt, a beep, the caller recorded into the
  extension's box under the recordings folder.
- ``supervise``: a beep, an extension keyed (ended by ``#``), and the caller
  joins the call that extension is on, to listen, whisper or barge
  (``switch.b2bua.supervise``); an extension on no such call is told so.

A caller who hangs up meanwhile ends the handler through ``CallerHungUp``,
which the call's runner expects; nothing here needs to catch it.
"""

from __future__ import annotations

import time
from typing import assert_never

import structlog

from switch.b2bua.control import DialFailure, HandledCall, Handler
from switch.b2bua.supervise import join
from switch.config import AnswerHangup, FollowMe, Menu, PlayPrompts, Route, Supervise, Voicemail

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
        await connect(call, route.extension, route.timeout, route.record)

    return handle


async def connect(call: HandledCall, extension: str, timeout: float, record: bool) -> None:
    """Ring ``extension``, bridge the caller with it, hang up when either leaves."""
    leg = await call.dial(extension, timeout=timeout)
    if isinstance(leg, DialFailure):
        log.info("no answer", call_id=call.id, target=extension, status=leg.status,
                 cause=leg.cause.value)  # fmt: skip
        await call.hangup(leg.cause)
        return
    await call.bridge(call.caller, leg, record=recording_path(call) if record else None)
    await call.hangup()


def recording_path(call: HandledCall) -> str:
    """Where a recorded call goes, under the recordings folder: tenant/date/call id."""
    day = time.strftime("%Y-%m-%d", time.gmtime())
    return f"{call.tenant or 'default'}/{day}/{file_name(call)}"


def file_name(call: HandledCall) -> str:
    """The call's WAV file name: its Call-ID, with nothing a path could misread."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in call.id) + ".wav"


def play_prompts(route: PlayPrompts) -> Handler:
    async def handle(call: HandledCall) -> None:
        await call.answer()
        await call.caller.play(route.play, language=route.language)
        await call.hangup()

    return handle


def menu(route: Menu) -> Handler:
    async def handle(call: HandledCall) -> None:
        await call.answer()
        caller = call.caller
        for _ in range(route.tries):
            await caller.play(route.prompt, language=route.language, interrupt=True)
            choice = await caller.collect(route.digits, route.timeout, terminators="#")
            log.info("menu choice", call_id=call.id, choice=choice)
            if choice in route.choices:
                await connect(call, route.choices[choice], route.ring, route.record)
                return
            await caller.play("menu-timeout" if not choice else "menu-invalid",
                              language=route.language)  # fmt: skip
        await caller.play("goodbye", language=route.language)
        await call.hangup()

    return handle


def voicemail(route: Voicemail) -> Handler:
    async def handle(call: HandledCall) -> None:
        await call.answer()
        await call.caller.play(["voicemail", "beep"], language=route.language)
        path = f"voicemail/{call.tenant or 'default'}/{route.extension}/{file_name(call)}"
        seconds = await call.caller.record(path, route.max_seconds, silence=route.silence)
        log.info("voicemail left", call_id=call.id, box=route.extension, seconds=seconds)
        await call.hangup()

    return handle


def supervise(route: Supervise) -> Handler:
    async def handle(call: HandledCall) -> None:
        await call.answer()
        caller = call.caller
        await caller.play("beep", language=route.language)
        extension = await caller.collect(route.digits, route.timeout, terminators="#")
        if not await join(call, extension, route.mode):
            await caller.play(["menu-invalid", "goodbye"], language=route.language)
        await call.hangup()

    return handle


def handler_for(route: Route) -> Handler:
    """The handler a route names, with the route's settings."""
    if isinstance(route, AnswerHangup):
        return answer_hangup(route)
    if isinstance(route, FollowMe):
        return follow_me(route)
    if isinstance(route, PlayPrompts):
        return play_prompts(route)
    if isinstance(route, Menu):
        return menu(route)
    if isinstance(route, Voicemail):
        return voicemail(route)
    if isinstance(route, Supervise):
        return supervise(route)
    assert_never(route)
