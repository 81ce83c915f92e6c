"""Call control's states and errors (switch/b2bua/control.py, legs.py), one call at a time.

A real ``SipEndpoint`` and relay on 127.0.0.1 take the INVITE of a phone written by
hand (a UDP socket), and the test drives the ``HandledCall`` itself: what each
operation sends, what a wrong one raises, and that a wrong one changes nothing.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from media import Relay, RelayConfig
from media.engine import MediaEngine
from switch.b2bua.call import CCEvent, CCEventConnect, CCEventDisconnect, CCEventFail, Side
from switch.b2bua.control import (
    CallerHungUp,
    DialFailure,
    Dialling,
    HandledCall,
    LegState,
    OutboundLeg,
    WrongState,
)
from switch.b2bua.forks import Target
from switch.b2bua.q850 import Cause
from switch.b2bua.supervise import Bridges
from switch.ban import BanList
from switch.endpoint import ServerRequest, SipEndpoint
from switch.metrics import Metrics
from switch.sip.dialog import DialogId, uac_id, uas_id
from switch.sip.message import Request, Response, parse_message
from switch.transport import Peer

SDP = (
    "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


class Phone:
    """A UDP socket that writes SIP by hand and reads what the switch sends it."""

    def __init__(self, switch_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.switch = ("127.0.0.1", switch_port)
        self.tag = secrets.token_hex(4)
        self.call_id = f"{secrets.token_hex(6)}@phone"

    def close(self) -> None:
        self.sock.close()

    def send(self, text: str, body: str = "") -> None:
        data = text.replace("\n", "\r\n") + f"Content-Length: {len(body)}\r\n\r\n" + body
        self.sock.sendto(data.encode(), self.switch)

    async def recv(self, timeout: float = 3.0) -> Request | Response:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)
        return parse_message(data)

    async def nothing(self, wait: float = 0.3) -> bool:
        try:
            await self.recv(wait)
        except TimeoutError:
            return True
        return False

    def _via(self) -> str:
        return f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport"

    def invite(self, cseq: int = 1) -> str:
        via = self._via()
        self.send(
            f"INVITE sip:500@acme.example SIP/2.0\n{via}\nMax-Forwards: 70\n"
            f"From: <sip:101@acme.example>;tag={self.tag}\nTo: <sip:500@acme.example>\n"
            f"Call-ID: {self.call_id}\nCSeq: {cseq} INVITE\n"
            f"Contact: <sip:101@127.0.0.1:{self.port}>\nContent-Type: application/sdp\n",
            SDP.format(port=self.port + 2),
        )
        return via

    def in_dialog(
        self, method: str, ok: Response, cseq: int, via: str | None = None, sdp: str = ""
    ) -> None:
        to = ok.headers.get("To")
        self.send(
            f"{method} sip:500@127.0.0.1:{self.switch[1]} SIP/2.0\n{via or self._via()}\n"
            f"Max-Forwards: 70\nFrom: <sip:101@acme.example>;tag={self.tag}\nTo: {to}\n"
            f"Call-ID: {self.call_id}\nCSeq: {cseq} {method}\n"
            + ("Content-Type: application/sdp\n" if sdp else ""),
            sdp,
        )

    def respond(self, request: Request, status: str, body: str = "") -> None:
        """Answer ``request`` (from the switch) as a UAS with our tag."""
        h = request.headers
        to = h.get("To") or ""
        if ";tag=" not in to:
            to += f";tag={self.tag}"
        vias = "\n".join(f"Via: {v}" for v in h.get_all("Via"))
        extra = "Content-Type: application/sdp\n" if body else ""
        self.send(
            f"SIP/2.0 {status}\n{vias}\nFrom: {h.get('From')}\nTo: {to}\n"
            f"Call-ID: {h.get('Call-ID')}\nCSeq: {h.get('CSeq')}\n"
            f"Contact: <sip:102@127.0.0.1:{self.port}>\n{extra}",
            body,
        )


@dataclass
class Board:
    """The switchboard a handled call asks: ``dial`` reaches ``phone``."""

    phone: Phone | None = None
    events: list[CCEvent] = field(default_factory=list)
    bridges: Bridges = field(default_factory=Bridges)

    def route(self, call: HandledCall, target: str) -> Dialling | DialFailure:
        if self.phone is None:
            return DialFailure(target, 404, "Not Found", Cause.UNALLOCATED_NUMBER)
        peer = Peer("udp", "127.0.0.1", self.phone.port)
        return Dialling([Target(f"sip:102@127.0.0.1:{self.phone.port}", peer)], "sip:102@x")

    def connected(self, call: HandledCall, dialling: Dialling, peer: Peer) -> None:
        pass

    def event(self, call: HandledCall, event: CCEvent) -> None:
        self.events.append(event)


@dataclass
class Switch:
    endpoint: SipEndpoint
    relay: Relay
    board: Board
    calls: asyncio.Queue[HandledCall]
    port: int
    beep: str  # a 0.2 s WAV to play


@pytest.fixture
async def switch(tmp_path: Path) -> AsyncIterator[Switch]:
    endpoint = SipEndpoint(Metrics(), BanList(10, 60, 60), "softswitch-test")
    endpoint.t1 = 0.1
    listener = await endpoint.transports.listen_udp("127.0.0.1", 0)
    relay = Relay(RelayConfig(port_min=42000, port_max=42200))
    board = Board()
    engine = MediaEngine(recordings=tmp_path)
    beep = tmp_path / "beep.wav"
    with wave.open(str(beep), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x10\x20" * 1600)
    calls: asyncio.Queue[HandledCall] = asyncio.Queue()
    dialogs: dict[DialogId, HandledCall] = {}

    def on_invite(incoming: ServerRequest) -> None:
        dialog_id = uas_id(incoming.request)
        known = find(dialog_id)
        if known is not None and dialog_id is not None:  # a re-INVITE (§14.2)
            known.on_request(incoming, dialog_id)
            return
        call = HandledCall(endpoint, incoming, relay=relay, engine=engine, switchboard=board,
                           dialogs=dialogs, ring_timeout=5)  # fmt: skip
        calls.put_nowait(call)

    def find(dialog_id: DialogId | None) -> HandledCall | None:
        return dialogs.get(dialog_id) if dialog_id is not None else None

    def on_in_dialog(incoming: ServerRequest) -> None:
        dialog_id = uas_id(incoming.request)
        call = find(dialog_id)
        assert call is not None and dialog_id is not None
        call.on_bye(incoming, dialog_id)

    def on_ack(request: Request, peer: Peer) -> None:
        dialog_id = uas_id(request)
        call = find(dialog_id)
        if call is not None and dialog_id is not None:
            call.on_ack(request, dialog_id)

    def on_2xx(response: Response, peer: Peer) -> None:
        dialog_id = uac_id(response)
        call = find(dialog_id)
        if call is not None and dialog_id is not None:
            call.on_2xx_again(response, dialog_id)

    endpoint.cores["INVITE"] = on_invite
    endpoint.cores["BYE"] = on_in_dialog
    endpoint.cores["UPDATE"] = on_in_dialog
    endpoint.ack_handler = on_ack
    endpoint.stray_2xx = on_2xx
    try:
        yield Switch(endpoint, relay, board, calls, listener.port, str(beep))
    finally:
        engine.close()
        relay.close()
        await endpoint.transports.close()


async def incoming(switch: Switch, phone: Phone) -> tuple[HandledCall, str]:
    via = phone.invite()
    call = await asyncio.wait_for(switch.calls.get(), 3)
    return call, via


async def answered(switch: Switch, phone: Phone) -> tuple[HandledCall, Response]:
    call, _ = await incoming(switch, phone)
    answering = asyncio.create_task(call.answer())
    ok = await phone.recv()
    assert isinstance(ok, Response) and ok.status == 200, ok
    phone.in_dialog("ACK", ok, 1)
    await asyncio.wait_for(answering, 3)
    return call, ok


async def test_ring_and_answer_once_and_wrong_states_change_nothing(switch: Switch) -> None:
    phone = Phone(switch.port)
    try:
        call, _ = await incoming(switch, phone)
        assert call.state is LegState.OFFERED
        await call.ring()
        ringing = await phone.recv()
        assert isinstance(ringing, Response) and ringing.status == 180
        await call.ring()  # idempotent: no second 180
        assert await phone.nothing()
        answering = asyncio.create_task(call.answer())
        ok = await phone.recv()
        assert isinstance(ok, Response) and ok.status == 200
        # The relay's port; the phone's first codec, and its telephone-event type.
        assert re.search(rb"m=audio 42[0-2]\d\d RTP/AVP 8 101\r\n", ok.body), ok.body
        assert not answering.done()  # answer() returns at the ACK, which is resent till then
        again = await phone.recv(1.0)
        assert isinstance(again, Response) and again.status == 200
        phone.in_dialog("ACK", ok, 1)
        await asyncio.wait_for(answering, 2)
        assert call.state is LegState.ANSWERED and call.caller.codec == "PCMA"
        assert switch.board.events == [CCEventConnect()]
        with pytest.raises(WrongState, match="answer: the caller is answered already"):
            await call.answer()
        with pytest.raises(WrongState, match="ring: the caller is answered"):
            await call.ring()
        with pytest.raises(WrongState, match="cannot be bridged with itself"):
            await call.bridge(call.caller, call.caller)
        assert await phone.nothing(0.3)  # none of that reached the phone
        assert await call.caller.play(switch.beep) is True  # the engine's endpoint plays
        assert call.state is LegState.ANSWERED
        await call.hangup(Cause.USER_BUSY)
        bye = await phone.recv()
        assert isinstance(bye, Request) and bye.method == "BYE"
        assert bye.headers.get("Reason") == 'Q.850;cause=17;text="User busy"'
        phone.respond(bye, "200 OK")
        await call.hangup()  # idempotent: no second BYE
        assert await phone.nothing()
        with pytest.raises(CallerHungUp, match="the caller was hung up by the switch"):
            await call.answer()
        assert switch.board.events[-1] == CCEventDisconnect(None)
    finally:
        phone.close()


async def test_hangup_before_answer_is_the_causes_final_response(switch: Switch) -> None:
    phone = Phone(switch.port)
    try:
        call, _ = await incoming(switch, phone)
        await call.hangup(Cause.USER_BUSY)
        busy = await phone.recv()
        assert isinstance(busy, Response) and busy.status == 486
        assert busy.headers.get("Reason") == 'Q.850;cause=17;text="User busy"'
        assert switch.board.events == [CCEventFail(486, "Busy Here")]
        with pytest.raises(CallerHungUp):
            await call.ring()
    finally:
        phone.close()


async def test_cancel_interrupts_the_answer_wait(switch: Switch) -> None:
    phone = Phone(switch.port)
    try:
        call, via = await incoming(switch, phone)
        phone.send(
            f"CANCEL sip:500@acme.example SIP/2.0\n{via}\nMax-Forwards: 70\n"
            f"From: <sip:101@acme.example>;tag={phone.tag}\nTo: <sip:500@acme.example>\n"
            f"Call-ID: {phone.call_id}\nCSeq: 1 CANCEL\n"
        )
        statuses = {(await phone.recv()).status, (await phone.recv()).status}  # type: ignore[union-attr]
        assert statuses == {200, 487}
        with pytest.raises(CallerHungUp, match="the caller hung up"):
            await call.answer()
        assert call.cancelled and switch.board.events == [CCEventFail(487, "Request Terminated")]
    finally:
        phone.close()


async def test_a_recorded_bridge_is_paused_and_resumed(switch: Switch) -> None:
    phone, far = Phone(switch.port), Phone(switch.port)
    switch.board.phone = far
    try:
        call, _ = await answered(switch, phone)
        with pytest.raises(WrongState, match="not in a recorded bridge"):
            call.pause_recording()
        dialling = asyncio.create_task(call.dial("102", timeout=5))
        invite = await far.recv()
        assert isinstance(invite, Request)
        far.respond(invite, "200 OK", SDP.format(port=far.port + 2).replace(" 8 0 101", " 8"))
        leg = await asyncio.wait_for(dialling, 3)
        assert isinstance(leg, OutboundLeg)
        bridging = asyncio.create_task(call.bridge(call.caller, leg, record="rec/1.wav"))
        await asyncio.sleep(0.2)
        recording = call.recording
        assert recording is not None and recording.path.name == "1.wav"
        call.pause_recording()
        assert recording.paused
        call.resume_recording()
        assert not recording.paused
        await call.hangup()
        await asyncio.wait_for(bridging, 3)
        assert recording.done.done() and recording.path.exists()
        assert 0.1 < recording.duration < 2
    finally:
        phone.close()
        far.close()


def origin(sdp: bytes) -> tuple[str, int]:
    """(session id, version) of an SDP's o= line."""
    fields = re.search(rb"^o=(.*?)\r$", sdp, re.M)
    assert fields is not None, sdp
    parts = fields.group(1).decode().split()
    return parts[1], int(parts[2])


async def test_hold_resume_and_refresh_are_answered_by_the_switch(switch: Switch) -> None:
    phone = Phone(switch.port)
    try:
        call, ok = await answered(switch, phone)
        first = origin(ok.body)
        held = SDP.format(port=phone.port + 2) + "a=sendonly\r\n"
        phone.in_dialog("INVITE", ok, 2, sdp=held)
        answer = await phone.recv()
        assert isinstance(answer, Response) and answer.status == 200, answer
        assert b"a=recvonly" in answer.body and re.search(rb"RTP/AVP 8 101\r\n", answer.body)
        assert origin(answer.body) == (first[0], first[1] + 1)  # RFC 3264 §8: same session
        again = await phone.recv()  # resent until the ACK (§13.3.1.4)
        assert isinstance(again, Response) and again.status == 200
        phone.in_dialog("ACK", ok, 2)
        assert call.caller.media is not None and call.caller.media.agreed is not None
        assert call.caller.media.agreed.held
        phone.in_dialog("INVITE", ok, 3, sdp=SDP.format(port=phone.port + 4))  # resume, moved
        resumed = await phone.recv()
        assert isinstance(resumed, Response) and resumed.status == 200
        assert b"a=sendrecv" in resumed.body and origin(resumed.body)[1] == first[1] + 2
        phone.in_dialog("ACK", ok, 3)
        assert call.caller.media.agreed.port == phone.port + 4
        phone.in_dialog("UPDATE", ok, 4)  # a session refresh (RFC 4028): nothing changes
        refreshed = await phone.recv()
        assert isinstance(refreshed, Response) and refreshed.status == 200 and not refreshed.body
        pcmu_only = SDP.format(port=phone.port + 4).replace(" 8 0 101", " 0")
        phone.in_dialog("INVITE", ok, 5, sdp=pcmu_only)  # the call is PCMA: cannot change
        refused = await phone.recv()
        assert isinstance(refused, Response) and refused.status == 488, refused
        assert "PCMA" in refused.reason
        assert call.state is LegState.ANSWERED
        await call.hangup()
    finally:
        phone.close()


async def test_callers_bye_interrupts_what_the_handler_awaits(switch: Switch) -> None:
    phone = Phone(switch.port)
    try:
        call, ok = await answered(switch, phone)
        sleeping = asyncio.create_task(call.sleep(30))
        await asyncio.sleep(0.1)
        phone.in_dialog("BYE", ok, 2)
        with pytest.raises(CallerHungUp, match="the caller hung up"):
            await asyncio.wait_for(sleeping, 2)
        response = await phone.recv()
        assert isinstance(response, Response) and response.status == 200
        assert switch.board.events == [CCEventConnect(), CCEventDisconnect(Side.A)]
    finally:
        phone.close()


async def test_bridge_needs_two_answered_legs_and_returns_who_left(switch: Switch) -> None:
    phone, far = Phone(switch.port), Phone(switch.port)
    switch.board.phone = far
    try:
        call, _ = await incoming(switch, phone)
        dialling = asyncio.create_task(call.dial("102", timeout=5))
        invite = await far.recv()
        assert isinstance(invite, Request) and invite.method == "INVITE"
        # Offered what the caller offered that the switch takes, with the caller's types.
        assert re.search(rb"m=audio \d+ RTP/AVP 8 0 101", invite.body), invite.body
        far.respond(invite, "180 Ringing")
        ringing = await phone.recv()  # the caller hears it ring
        assert isinstance(ringing, Response) and ringing.status == 180
        far.respond(invite, "200 OK", SDP.format(port=far.port + 2).replace(" 8 0 101", " 8 101"))
        leg = await asyncio.wait_for(dialling, 3)
        assert isinstance(leg, OutboundLeg) and leg.codec == "PCMA"
        ack = await far.recv()
        assert isinstance(ack, Request) and ack.method == "ACK"
        with pytest.raises(WrongState, match="bridge: the caller is ringing, not answered"):
            await call.bridge(call.caller, leg)
        answering = asyncio.create_task(call.answer())
        ok = await phone.recv()
        assert isinstance(ok, Response) and ok.status == 200
        phone.in_dialog("ACK", ok, 1)
        await asyncio.wait_for(answering, 2)
        bridging = asyncio.create_task(call.bridge(call.caller, leg))
        await asyncio.sleep(0.1)
        with pytest.raises(WrongState, match="is bridged with the leg to 102 already"):
            await call.bridge(call.caller, leg)
        with pytest.raises(WrongState, match="play: the caller is bridged"):
            await call.caller.play("hold-music")
        far.send(
            f"BYE sip:500@127.0.0.1:{switch.port} SIP/2.0\n{far._via()}\nMax-Forwards: 70\n"
            f"From: {ack.headers.get('To')}\nTo: {ack.headers.get('From')}\n"
            f"Call-ID: {ack.call_id}\nCSeq: 1 BYE\n"
        )
        gone = await asyncio.wait_for(bridging, 2)
        assert gone is leg and leg.state is LegState.ENDED
        assert call.caller.state is LegState.ANSWERED  # the caller stays, with the switch
        assert await call.caller.play(switch.beep) is True  # on an endpoint of its own again
        await call.hangup()
        assert switch.board.events[-1] == CCEventDisconnect(Side.B)  # the callee left first
    finally:
        phone.close()
        far.close()


async def test_cancelling_a_dial_cancels_the_ringing_phone(switch: Switch) -> None:
    phone, far = Phone(switch.port), Phone(switch.port)
    switch.board.phone = far
    try:
        call, _ = await answered(switch, phone)
        dialling = asyncio.create_task(call.dial("102"))
        invite = await far.recv()
        assert isinstance(invite, Request)
        far.respond(invite, "180 Ringing")
        await asyncio.sleep(0.2)
        dialling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dialling
        cancel = await far.recv()
        assert isinstance(cancel, Request) and cancel.method == "CANCEL"
        assert call.caller.state is LegState.ANSWERED and call.legs == []
        switch.board.phone = None
        assert await call.dial("999") == DialFailure("999", 404, "Not Found", Cause(1))
    finally:
        phone.close()
        far.close()
