"""Originating a leg: one INVITE per contact of a user ("ring all"), first 2xx wins.

A call's leg B and a transfer's leg to its target are both made here. Each
contact gets its own INVITE, a client transaction with its own Call-ID and
From tag (each fork is a dialog of ours, §12.1.2). Provisional responses go
to ``on_ring``; the first 2xx goes to ``on_answer`` with its new ``Dialog``
(the owner ACKs it: a late offer makes the ACK wait, §13.2.1), and the other
forks get CANCEL with ``Reason: SIP;cause=200`` (RFC 3326). A 2xx from a
second fork, or after the owner gave up, is ACKed and ended with BYE
(§13.2.2.4). When every fork has failed, or nobody answers within the ring
timeout (the forks are cancelled, 480), ``on_fail`` gets the best failure,
unless it ``fails_over`` (408, 5xx) and a ``failover`` fork is left: then that
one is sent, then the next, within the same ring timeout (gateways in order).

It does not know what the leg is for, where its SDP comes from, or what to
tell the party waiting for it; the owner does.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from switch.endpoint import SipEndpoint
from switch.sip.dialog import Dialog
from switch.sip.headers import NameAddr
from switch.sip.message import Headers, Request, Response, new_tag, random_hex
from switch.sip.transaction import ClientTransaction
from switch.transport import Peer

# RFC 3326 §2, RFC 3261 §9.1: tells the other phones not to log a missed call.
REASON_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'
log = structlog.get_logger()

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER"


@dataclass(frozen=True, slots=True)
class Target:
    """One contact of the callee and where to reach it."""

    uri: str
    peer: Peer
    from_uri: str | None = None  # who the INVITE says calls, if not the caller (caller ID)


class Fork:
    """One INVITE of an originated leg to one contact."""

    def __init__(self, target: Target, request: Request) -> None:
        self.target = target
        self.request = request
        self.txn: ClientTransaction | None = None
        self.final: int | None = None
        self.reason = ""  # of the final response
        self.cancelled = False  # we sent CANCEL before its final response came


def invite(
    endpoint: SipEndpoint,
    target: Target,
    caller: NameAddr,
    callee_aor: str,
    *,
    max_forwards: int = 70,
    body: bytes = b"",
    content_type: str | None = "application/sdp",
    extra: tuple[tuple[str, str], ...] = (),
) -> Request:
    """A dialog-creating INVITE of ours: ``caller``'s identity with our tag (§12.1.2)."""
    headers = Headers()
    headers.add("Max-Forwards", str(max_forwards))
    headers.add("From", str(NameAddr(caller.uri, caller.display, (("tag", new_tag()),))))
    headers.add("To", f"<{callee_aor}>")
    headers.add("Call-ID", f"{random_hex(12)}@softswitch")
    headers.add("CSeq", "1 INVITE")
    headers.add("Contact", endpoint.contact_for(target.peer))
    headers.add("Allow", ALLOW)
    for name, value in extra:
        headers.add(name, value)
    if body and content_type is not None:
        headers.add("Content-Type", content_type)
    return Request("INVITE", target.uri, headers, body)


class Forks:
    """The forks of one originated leg; see the module docstring."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        *,
        ring_timeout: float,
        on_ring: Callable[[Response], None],
        on_answer: Callable[[Fork, Dialog, Response], None],
        on_fail: Callable[[int, str], None],
    ) -> None:
        self.endpoint = endpoint
        self.ring_timeout = ring_timeout
        self.on_ring = on_ring
        self.on_answer = on_answer
        self.on_fail = on_fail
        self.forks: list[Fork] = []
        self.failover: list[Fork] = []  # sent one by one after the forks fail (fails_over)
        self.winner: Fork | None = None
        self.dialog: Dialog | None = None  # the winner's dialog, as it was made
        self.done = False  # answered, failed or stopped: later answers get ACK and BYE
        self._timer: asyncio.TimerHandle | None = None

    def start(self, forks: list[Fork], failover: list[Fork] | None = None) -> None:
        self.forks = list(forks)
        self.failover = list(failover or ())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.ring_timeout, self._on_ring_timeout)
        for fork in forks:
            self._send(fork)

    def _send(self, fork: Fork) -> None:
        on_response = functools.partial(self._on_response, fork)
        fork.txn = self.endpoint.send_request(fork.request, fork.target.peer, on_response)

    def stop(self, reason: str | None = None) -> None:
        """Give up: CANCEL every fork still ringing; no callback follows."""
        self._stop_timer()
        self.done = True
        for fork in self.forks:
            if fork.final is None and fork.txn is not None:
                fork.cancelled = True
                self.endpoint.cancel(fork.txn, reason)

    def release(self) -> None:
        """The owner is done with these forks: no callback follows, and the owner's
        bound methods are let go so the owner is freed by reference counting (its
        forks' client transactions live on for Timer M)."""
        self._stop_timer()
        self.done = True
        self.on_ring, self.on_answer, self.on_fail = _ignore_ring, _ignore_answer, _ignore_fail

    def _on_response(self, fork: Fork, response: Response) -> None:
        status = response.status
        if status < 200:
            if status > 100 and not self.done:
                self.on_ring(response)
            return
        fork.final, fork.reason = status, response.reason
        if status >= 300:
            if not self.done and all(f.final is not None for f in self.forks):
                best = best_failure([f.final for f in self.forks if f.final is not None])
                if self.failover and fails_over(best):
                    nxt = self.failover.pop(0)
                    log.info("failing over", call_id=fork.request.call_id, status=best,
                             to=nxt.target.uri)  # fmt: skip
                    self.forks.append(nxt)
                    self._send(nxt)
                    return
                self._fail(best, "")
            return
        dialog = Dialog.uac(fork.request, response)
        if self.done:
            # A second fork answered (or the owner gave up) before its CANCEL arrived.
            self.endpoint.send_ack(dialog.ack(fork.request.cseq.number), fork.target.peer)
            self.endpoint.send_request(dialog.request("BYE"), fork.target.peer, ignore)
            return
        self.winner, self.dialog = fork, dialog
        self.stop(REASON_ELSEWHERE)
        self.on_answer(fork, dialog, response)

    def _fail(self, status: int, reason: str) -> None:
        self._stop_timer()
        self.done = True
        self.on_fail(status, reason)

    def _on_ring_timeout(self) -> None:
        self._timer = None
        if not self.done:
            self.stop()
            self._fail(480, "No Answer")

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _ignore_ring(response: Response) -> None:
    """A released Forks' on_ring."""


def _ignore_answer(fork: Fork, dialog: Dialog, response: Response) -> None:
    """A released Forks' on_answer."""


def _ignore_fail(status: int, reason: str) -> None:
    """A released Forks' on_fail."""


def best_failure(statuses: list[int]) -> int:
    """The final response for the caller when every fork failed (after §16.7 step 6).

    A 6xx is definitive; a busy phone says more than an unreachable one; else
    the lowest class wins, a 408 (no response at all) only when nothing else came.
    """
    if not statuses:
        return 480
    six = [s for s in statuses if s >= 600]
    if six:
        return min(six)
    if 486 in statuses:
        return 486
    answered = [s for s in statuses if s != 408]
    return min(answered) if answered else 408


def fails_over(status: int) -> bool:
    """A failure the next target may not have: a server error or no answer at all.

    Not a busy or unknown number (486, 404, ...): another route reaches the same callee.
    """
    return status == 408 or 500 <= status < 600


def ignore(response: Response) -> None:
    """Responses to a BYE of ours: the call is over whatever they say (§15.1.1)."""
