"""The SIP endpoint: bytes from the transports in, transactions and handlers out.

This is the thin asyncio adapter around the sans-IO core (``switch.sip``):
it parses, answers malformed requests (400 with the reason, §8.2.6.2 / RFC
4475), stamps ``received``/``rport`` on the top Via (§18.2.1, RFC 3581),
matches server transactions (§17.2.3) so retransmissions never reach a
handler twice, runs the transactions' timers on the event loop, and routes
responses per §18.2.2. Requests are handed to a handler per method;
OPTIONS is answered here (phones use it as a keep-alive).

Packets from a blocked source are dropped before parsing: it costs them
nothing to send and must cost us as little to ignore.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from switch.ban import BanList
from switch.metrics import Metrics
from switch.sip.errors import ParseError
from switch.sip.headers import Via, parse_via
from switch.sip.message import Request, Response, error_response, new_tag, parse_message, stamp_via
from switch.sip.syntax import split_list
from switch.sip.transaction import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    TransactionTable,
)
from switch.sip.uri import SipUri
from switch.transport import Peer, Transports

log = structlog.get_logger()

Handler = Callable[[Request, Peer, str], Awaitable[Response]]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER"
SUPPORTED: frozenset[str] = frozenset()  # option tags we implement (none yet, §20.37)


class SipEndpoint:
    def __init__(self, metrics: Metrics, bans: BanList, user_agent: str) -> None:
        self.metrics = metrics
        self.bans = bans
        self.user_agent = user_agent
        self.transports = Transports(self.on_message, self.on_stream_error)
        self.transactions = TransactionTable()
        self.handlers: dict[str, Handler] = {"OPTIONS": self._options}
        self.draining = False
        self._timers: dict[ServerTransaction, asyncio.TimerHandle] = {}
        self._peers: dict[ServerTransaction, Peer] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- input ---------------------------------------------------------------

    def on_message(self, data: bytes, peer: Peer) -> None:
        if self.bans.is_banned(peer.host, time.time()):
            self.metrics.dropped_from_banned.inc()
            return
        try:
            message = parse_message(data)
        except ParseError as exc:
            self._malformed(data, peer, exc)
            return
        if isinstance(message, Response):
            self._on_response(message, peer)
        else:
            self._on_request(message, peer)

    def on_stream_error(self, exc: ParseError, peer: Peer) -> None:
        self.metrics.sip_parse_errors.inc()
        log.info("stream framing lost, closing", source=peer.host, port=peer.port, error=str(exc))

    def _malformed(self, data: bytes, peer: Peer, exc: ParseError) -> None:
        self.metrics.sip_parse_errors.inc()
        log.info("malformed message", source=peer.host, port=peer.port, error=str(exc))
        reason = "Bad Request" if exc.status == 400 else "Version Not Supported"
        response = error_response(data, exc.status, f"{reason}: {exc}"[:200])
        if response is None:
            return  # a response, or nothing to answer to: drop (counted above)
        try:
            via = parse_via(split_list(response.headers.get("Via") or "", "Via")[0])
            destination = response_peer(via, peer)
        except ParseError:
            destination = peer
        self.metrics.response(response.status)
        self.transports.send(bytes(response), destination)

    def _on_response(self, response: Response, peer: Peer) -> None:
        self.metrics.response(response.status)
        # No client transactions yet (the switch sends no requests before the
        # B2BUA): a response matches nothing and is dropped (§18.1.2).
        log.debug("stray response", status=response.status, source=peer.host)

    def _on_request(self, request: Request, peer: Peer) -> None:
        self.metrics.request(request.method)
        request.replace_top_via(stamp_via(request.top_via, peer.host, peer.port))
        txn = self.transactions.match_request(request)
        now = asyncio.get_running_loop().time()
        if txn is None:
            resend = self.transactions.retired_response(request)
            if resend is not None:
                self.transports.send(resend, response_peer(request.top_via, peer))
                return
        else:
            txn.receive(request, now)  # a retransmission: the transaction answers it
            self._service(txn)
            return
        if request.method == "ACK":
            return  # ACK for a 2xx: no dialogs yet, nothing to confirm
        cls = ServerInviteTransaction if request.method == "INVITE" else ServerNonInviteTransaction
        txn = self.transactions.add(cls(request, now, reliable=peer.reliable))
        self._peers[txn] = peer
        txn.events()  # RequestReceived: the request is handled right below
        to_tag = new_tag()
        immediate = self._precheck(request, to_tag)
        if immediate is not None:
            self._respond(txn, immediate)
            return
        handler = self.handlers.get(request.method)
        if handler is None:
            self._respond(txn, self._not_implemented(request, to_tag))
            return
        task = asyncio.create_task(self._run(handler, txn, request, peer, to_tag))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _precheck(self, request: Request, to_tag: str) -> Response | None:
        """Checks every request passes before its handler (§8.2.1-§8.2.2)."""
        if self.draining:
            response = request.response(503, "Shutting down", to_tag)
            response.headers.add("Retry-After", "5")
            return response
        if not isinstance(request.request_uri, SipUri):
            return request.response(416, "Unsupported URI Scheme", to_tag)
        unsupported = [
            tag
            for value in request.headers.get_all("Require")
            for tag in [value.strip()]
            if tag not in SUPPORTED
        ]
        if unsupported and request.method not in ("CANCEL", "ACK"):
            response = request.response(420, "Bad Extension", to_tag)
            response.headers.add("Unsupported", ", ".join(unsupported))
            return response
        return None

    def _not_implemented(self, request: Request, to_tag: str) -> Response:
        known = request.method in ALLOW
        response = request.response(405 if known else 501, None, to_tag)
        response.headers.add("Allow", ALLOW)
        return response

    async def _options(self, request: Request, peer: Peer, to_tag: str) -> Response:
        response = request.response(200, "OK", to_tag)
        response.headers.add("Allow", ALLOW)
        response.headers.add("Accept", "application/sdp")
        return response

    async def _run(
        self, handler: Handler, txn: ServerTransaction, request: Request, peer: Peer, to_tag: str
    ) -> None:
        try:
            response = await handler(request, peer, to_tag)
        except Exception as exc:
            log.exception("handler failed", method=request.method, call_id=request.call_id)
            response = request.response(
                500, f"Server Internal Error ({type(exc).__name__})", to_tag
            )
        if not txn.terminated:
            self._respond(txn, response)

    # -- output --------------------------------------------------------------

    def _respond(self, txn: ServerTransaction, response: Response) -> None:
        response.headers.add("Server", self.user_agent)
        self.metrics.response(response.status)
        txn.send_response(response, asyncio.get_running_loop().time())
        self._service(txn)

    def _service(self, txn: ServerTransaction) -> None:
        """Send what the transaction wants sent, re-arm its timer, forget it when done."""
        peer = self._peers.get(txn)
        datagrams = txn.datagrams_to_send()
        if peer is not None and datagrams:
            destination = response_peer(txn.request.top_via, peer)
            for data in datagrams:
                self.transports.send(data, destination)
        txn.events()
        handle = self._timers.pop(txn, None)
        if handle is not None:
            handle.cancel()
        if txn.terminated or (
            isinstance(txn, ServerNonInviteTransaction) and self.transactions.retire(txn)
        ):
            self.transactions.remove(txn)
            self._peers.pop(txn, None)
            return
        when = txn.next_timer()
        if when is not None:
            loop = asyncio.get_running_loop()
            self._timers[txn] = loop.call_at(when, self._fire, txn)

    def _fire(self, txn: ServerTransaction) -> None:
        self._timers.pop(txn, None)
        txn.handle_timer(asyncio.get_running_loop().time())
        self._service(txn)

    def housekeep(self) -> None:
        """Periodic upkeep (the daemon calls it about once a second)."""
        self.transactions.expire_retired(asyncio.get_running_loop().time())

    async def drain(self, timeout: float) -> None:
        """Refuse new requests and let transactions in flight finish, up to ``timeout``."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._tasks or self._busy()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def _busy(self) -> bool:
        """Transactions still waiting on something other than absorbing retransmissions."""
        return any(not txn.terminated and txn.state.value in ("Trying", "Proceeding")
                   for txn in self._peers)  # fmt: skip


def response_peer(via: Via, source: Peer) -> Peer:
    """Where a response goes (§18.2.2, RFC 3581 §4).

    Over a stream, back on the connection the request came in on. Over UDP,
    to the source address, at the source port when the client asked for
    rport, else at the port in sent-by (default 5060).
    """
    if source.reliable:
        return source
    if via.has_rport:
        return source
    return Peer(source.transport, source.host, via.port or 5060)
