"""The SIP endpoint: bytes from the transports in, transactions and handlers out.

This is the thin asyncio adapter around the sans-IO core (``switch.sip``):
it parses, answers malformed requests (400 with the reason, §8.2.6.2 / RFC
4475), stamps ``received``/``rport`` on the top Via (§18.2.1, RFC 3581),
matches server transactions (§17.2.3) so retransmissions never reach a
handler twice, runs the transactions' timers on the event loop, and routes
responses per §18.2.2. Requests are handed to a handler per method;
OPTIONS is answered here (phones use it as a keep-alive).

A handler returns one response. A user-agent core that answers over time
(an INVITE: 1xx, then the final) registers in ``cores`` instead and gets a
``ServerRequest`` it can ``respond`` through; a CANCEL for it is answered
here (§9.2) and reported as ``ServerRequest.on_cancel``. ACKs for 2xx and
responses for no transaction go to ``ack_handler`` and ``stray_2xx`` (the
UAS and UAC cores: §13.3.1.4, §13.2.2.4).

Requests the switch sends go out through ``send_request`` (a client
transaction, §17.1, with our Via and a new branch), ``send_ack`` (the ACK
for a 2xx, outside any transaction) and ``cancel`` (§9.1).

Over TCP/TLS, what has no open connection gets one (switch.transport): a
request to its next hop (§18.1.1: the first Route, else the Request-URI),
a response to its Via (§18.2.2). A client transaction whose connection
cannot be made is ended here and its owner gets a 503 made here at once
(§8.1.3.1, §17.1.4), so a call fails over to the next gateway rather than
waiting for Timer B.

Packets from a blocked source are dropped before parsing: it costs them
nothing to send and must cost us as little to ignore.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import structlog

from switch.ban import BanList
from switch.metrics import Metrics
from switch.sip.errors import ParseError
from switch.sip.headers import Via, parse_via, sent_by
from switch.sip.message import (
    Headers,
    Request,
    Response,
    error_response,
    new_branch,
    new_tag,
    parse_message,
    stamp_via,
)
from switch.sip.syntax import split_list
from switch.sip.transaction import (
    ABSORB,
    T1,
    T2,
    AckReceived,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    Event,
    ResponseReceived,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    State,
    Timeout,
    Transaction,
    TransactionTable,
)
from switch.sip.uri import SipUri
from switch.transport import Peer, Transports

log = structlog.get_logger()

# The reason phrase of the 408 a client transaction's Timer B or F makes (§8.1.3.1): nothing
# came back, so this one was made here, not received.
NO_RESPONSE = "Request Timeout (no response)"
# The reason phrase of the 503 a transport error makes (§8.1.3.1): the request never left.
TRANSPORT_ERROR = "Service Unavailable (transport error)"

Handler = Callable[[Request, Peer, str], Awaitable[Response]]
OnResponse = Callable[[Response], None]


class ServerRequest:
    """A request a user-agent core answers over time: 1xx first, then one final."""

    def __init__(self, endpoint: SipEndpoint, txn: ServerTransaction, peer: Peer, to_tag: str):
        self.endpoint = endpoint
        self.txn = txn
        self.request = txn.request
        self.peer = peer
        self.to_tag = to_tag
        self.on_cancel: Callable[[Request], None] | None = None  # set by the core

    @property
    def answered(self) -> bool:
        return self.txn.state is not State.PROCEEDING and self.txn.state is not State.TRYING

    def respond(self, response: Response) -> None:
        if not self.txn.terminated:
            self.endpoint._respond(self.txn, response)


class OkUntilAck:
    """Our 2xx to an INVITE, sent again until its ACK comes (RFC 3261 §13.3.1.4).

    The INVITE server transaction ends at its 2xx, so the user-agent core resends it after
    T1, doubling up to T2, whatever the transport: the 2xx travels end to end and a hop
    past the next one may be UDP. Over a stream it goes on the connection the INVITE came
    in on, or, when that one has closed, over a new one to the Via's sent-by (§18.2.2): a
    phone whose TCP connection broke before our 2xx reached it still gets it. No ACK within
    64*T1 calls ``on_timeout``: the caller is gone, and the core ends the dialog (BYE).
    ``acked`` stops it, and drops its references (the callback is usually bound to a call:
    it must not outlive it).
    """

    __slots__ = ("_connect_to", "_endpoint", "_ok", "_on_timeout", "_peer", "_timer")

    def __init__(
        self, incoming: ServerRequest, ok: Response, on_timeout: Callable[[], None]
    ) -> None:
        self._endpoint: SipEndpoint | None = incoming.endpoint
        self._ok = ok
        self._on_timeout: Callable[[], None] | None = on_timeout
        self._peer, self._connect_to = response_route(incoming.request.top_via, incoming.peer)
        self._timer: asyncio.TimerHandle | None = None
        self._arm(incoming.endpoint.t1, 0.0)

    @property
    def waiting(self) -> bool:
        return self._endpoint is not None

    def acked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._endpoint = self._on_timeout = None

    def _arm(self, interval: float, waited: float) -> None:
        assert self._endpoint is not None
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(
            interval, self._fire, min(2 * interval, T2), waited + interval
        )

    def _fire(self, interval: float, waited: float) -> None:
        endpoint, on_timeout = self._endpoint, self._on_timeout
        if endpoint is None or on_timeout is None:
            return
        if waited >= 64 * endpoint.t1:
            self.acked()
            on_timeout()
            return
        endpoint.transports.send(bytes(self._ok), self._peer, connect_to=self._connect_to)
        self._arm(interval, waited)


Core = Callable[[ServerRequest], None]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, REFER"
# Option tags we implement (§20.37): Replaces (RFC 3891), REFER without NOTIFY (RFC 4488).
SUPPORTED: frozenset[str] = frozenset({"replaces", "norefersub"})


class SipEndpoint:
    def __init__(self, metrics: Metrics, bans: BanList, user_agent: str) -> None:
        self.metrics = metrics
        self.bans = bans
        self.user_agent = user_agent
        self.transports = Transports(self.on_message, self.on_stream_error)
        self.transactions = TransactionTable()
        self.handlers: dict[str, Handler] = {"OPTIONS": self._options}
        self.cores: dict[str, Core] = {}
        self.ack_handler: Callable[[Request, Peer], None] | None = None
        self.stray_2xx: Callable[[Response, Peer], None] | None = None
        self.public_address: str | None = None  # for our Via, when not the listening address
        # RTT estimate for every transaction (§17.1.1.1): retransmissions start at T1, and
        # Timers B, F, H, J, L run 64*T1. Raised for slow links, lowered for tests.
        self.t1 = T1
        self.draining = False
        self._timers: dict[Transaction, asyncio.TimerHandle] = {}
        self._peers: dict[Transaction, Peer] = {}
        self._callbacks: dict[ClientTransaction, OnResponse] = {}
        self._server_requests: dict[ServerTransaction, ServerRequest] = {}
        self._cancel_pending: dict[ClientInviteTransaction, Request] = {}
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
        txn = self.transactions.match_response(response)
        if txn is not None:
            txn.receive(response, asyncio.get_running_loop().time())
            self._service(txn)
            return
        if (
            200 <= response.status < 300
            and response.cseq.method == "INVITE"
            and self.stray_2xx is not None
        ):
            # a retransmitted 2xx, or one from another fork: the UAC core's (§13.2.2.4)
            self.stray_2xx(response, peer)
            return
        log.debug("stray response", status=response.status, source=peer.host)

    def _on_request(self, request: Request, peer: Peer) -> None:
        self.metrics.request(request.method)
        request.replace_top_via(stamp_via(request.top_via, peer.host, peer.port))
        txn = self.transactions.match_request(request)
        now = asyncio.get_running_loop().time()
        if txn is None:
            resend = self.transactions.retired_response(request)
            if resend is not None and request.method != "ACK":
                if resend != ABSORB:  # an INVITE answered 2xx absorbs it (RFC 6026 §7.1)
                    self.transports.send(resend, response_peer(request.top_via, peer))
                return
        else:
            txn.receive(request, now)  # a retransmission: the transaction answers it
            self._service(txn)
            return
        if request.method == "ACK":
            if self.ack_handler is not None:
                self.ack_handler(request, peer)  # ACK for a 2xx: the UAS core's (§13.3.1.4)
            return
        cls = ServerInviteTransaction if request.method == "INVITE" else ServerNonInviteTransaction
        txn = self.transactions.add(cls(request, now, reliable=peer.reliable, t1=self.t1))
        self._peers[txn] = peer
        txn.events()  # RequestReceived: the request is handled right below
        to_tag = new_tag()
        immediate = self._precheck(request, to_tag)
        if immediate is not None:
            self._respond(txn, immediate)
            return
        if request.method == "CANCEL":
            self._cancel(txn, to_tag)
            return
        core = self.cores.get(request.method)
        if core is not None:
            server_request = ServerRequest(self, txn, peer, to_tag)
            self._server_requests[txn] = server_request
            try:
                core(server_request)
            except Exception as exc:
                log.exception("core failed", method=request.method, call_id=request.call_id)
                server_request.respond(
                    request.response(500, f"Server Internal Error ({type(exc).__name__})", to_tag)
                )
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

    def _cancel(self, txn: ServerTransaction, to_tag: str) -> None:
        """§9.2: 200 for a CANCEL that finds its INVITE, 481 otherwise. Then the core
        of the INVITE hears of it and answers the INVITE (487), in that order."""
        cancel = txn.request
        invite = self.transactions.invite_for_cancel(cancel)
        if invite is None:
            # An INVITE answered 2xx is retired: there, as in Accepted, nothing to cancel.
            status = 200 if self.transactions.retired_invite(cancel) else 481
            self._respond(txn, cancel.response(status, None, to_tag))
            return
        self._respond(txn, cancel.response(200, None, to_tag))
        server_request = self._server_requests.get(invite)
        if server_request is None or server_request.answered:
            return
        if server_request.on_cancel is not None:
            server_request.on_cancel(cancel)
        else:
            server_request.respond(invite.request.response(487, None, server_request.to_tag))

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

    # -- requests we send (§8.1, §17.1) -------------------------------------

    def via_for(self, peer: Peer) -> Via:
        """Our Via toward ``peer``: a new branch, and rport for NAT (RFC 3581 §3)."""
        host, port = self._sent_by(peer)
        return Via(peer.transport.upper(), host, port, (("branch", new_branch()), ("rport", None)))

    def sent_by_for(self, peer: Peer) -> str:
        """The sent-by of our Via toward ``peer`` (what loop detection looks for)."""
        host, port = self._sent_by(peer)
        return sent_by(host, port)

    def _sent_by(self, peer: Peer) -> tuple[str, int | None]:
        listener = self.transports.local(peer.transport)
        if listener is None:
            # We cannot take connections of this transport: the peer answers on ours
            # (§18.2.2) and, should that close, at the address we do listen on.
            listener = self.transports.listeners[0] if self.transports.listeners else None
        if listener is None:
            return self.public_address or "127.0.0.1", None
        return self.public_address or self.transports.local_host(listener, peer), listener.port

    def contact_for(self, peer: Peer, user: str | None = None) -> str:
        """Our Contact for a dialog reached over ``peer``'s transport."""
        via = self.via_for(peer)
        userinfo = f"{user}@" if user else ""
        transport = "" if peer.transport == "udp" else f";transport={peer.transport}"
        return f"<sip:{userinfo}{via.sent_by}{transport}>"

    def send_request(
        self, request: Request, peer: Peer, on_response: OnResponse
    ) -> ClientTransaction:
        """Send ``request`` to ``peer`` in a new client transaction.

        ``on_response`` gets every response the transaction passes up; Timer
        B or F firing reaches it as a 408 made here (§8.1.3.1).
        """
        request.push_via(self.via_for(peer))
        if "Max-Forwards" not in request.headers:
            request.headers.add("Max-Forwards", "70")
        request.headers.set("User-Agent", self.user_agent)
        cls = ClientInviteTransaction if request.method == "INVITE" else ClientNonInviteTransaction
        txn = self.transactions.add(cls(request, reliable=peer.reliable, t1=self.t1))
        self._peers[txn] = peer
        self._callbacks[txn] = on_response
        txn.start(asyncio.get_running_loop().time())
        self._service(txn)
        return txn

    def send_ack(self, ack: Request, peer: Peer) -> None:
        """The ACK for a 2xx: its own branch, no transaction (§13.2.2.4, §17.1.1.3)."""
        ack.push_via(self.via_for(peer))
        self.transports.send(bytes(ack), peer, connect_to=next_hop(ack, peer.transport))

    def cancel(self, txn: ClientTransaction, reason: str | None = None) -> None:
        """CANCEL a client INVITE transaction (§9.1).

        Not before a provisional response has come (§9.1: the CANCEL could
        overtake the INVITE); after a final response there is nothing to cancel.
        """
        if not isinstance(txn, ClientInviteTransaction) or txn.terminated:
            return
        if txn.state is State.COMPLETED:
            return
        invite = txn.request
        headers = Headers()
        headers.add("Via", invite.headers.get_all("Via")[0])
        headers.add("Max-Forwards", "70")
        for route in invite.headers.values("Route"):
            headers.add("Route", route)
        for name in ("From", "To", "Call-ID"):
            headers.add(name, invite.headers.get(name) or "")
        headers.add("CSeq", f"{invite.cseq.number} CANCEL")
        if reason is not None:
            headers.add("Reason", reason)
        cancel = Request("CANCEL", invite.uri, headers)
        if txn.state is State.CALLING:
            self._cancel_pending[txn] = cancel
            return
        self._send_cancel(txn, cancel)

    def _send_cancel(self, txn: ClientInviteTransaction, cancel: Request) -> None:
        peer = self._peers.get(txn)
        if peer is None:
            return
        # The CANCEL shares the INVITE's branch, so no new Via here (§9.1).
        ctxn = self.transactions.add(
            ClientNonInviteTransaction(cancel, reliable=peer.reliable, t1=self.t1)
        )
        self._peers[ctxn] = peer
        self._callbacks[ctxn] = _ignore
        ctxn.start(asyncio.get_running_loop().time())
        self._service(ctxn)

    # -- output --------------------------------------------------------------

    def _respond(self, txn: ServerTransaction, response: Response) -> None:
        if "Server" not in response.headers:
            response.headers.add("Server", self.user_agent)
        self.metrics.response(response.status)
        txn.send_response(response, asyncio.get_running_loop().time())
        self._service(txn)

    def _service(self, txn: Transaction) -> None:
        """Send what the transaction wants sent, re-arm its timer, forget it when done."""
        peer = self._peers.get(txn)
        datagrams = txn.datagrams_to_send()
        if peer is not None and datagrams:
            if isinstance(txn, ServerTransaction):
                destination, connect_to = response_route(txn.request.top_via, peer)
                on_error: Callable[[str], None] | None = None
            else:
                assert isinstance(txn, ClientTransaction)
                destination = peer
                connect_to = next_hop(txn.request, peer.transport)
                on_error = functools.partial(self._transport_error, txn)
            for data in datagrams:
                self.transports.send(data, destination, connect_to=connect_to, on_error=on_error)
        events = txn.events()
        if isinstance(txn, ClientTransaction):
            self._client_events(txn, events)
        elif peer is not None and self.ack_handler is not None:
            # An ACK for a 2xx that reused the INVITE's branch reaches the transaction
            # in Accepted (RFC 6026 §7.1); it is the UAS core's all the same.
            for event in events:
                if isinstance(event, AckReceived):
                    self.ack_handler(event.request, peer)
        handle = self._timers.pop(txn, None)
        if handle is not None:
            handle.cancel()
        if txn.terminated or (isinstance(txn, ServerTransaction) and self.transactions.retire(txn)):
            self._forget(txn)
            return
        if isinstance(txn, ServerTransaction) and txn.state not in (State.TRYING, State.PROCEEDING):
            # Answered: a CANCEL has nothing left to cancel (``_cancel``), and the core
            # keeps its own ServerRequest for 2xx retransmissions. Forgetting ours and
            # its ``on_cancel`` breaks the cycle core -> ServerRequest -> bound method ->
            # core (a B2BUA call), so an ended call is freed by reference counting rather
            # than by a full garbage collection, and not kept for the INVITE's Timer L.
            server_request = self._server_requests.pop(txn, None)
            if server_request is not None:
                server_request.on_cancel = None
        when = txn.next_timer()
        if when is not None:
            loop = asyncio.get_running_loop()
            self._timers[txn] = loop.call_at(when, self._fire, txn)

    def _forget(self, txn: Transaction) -> None:
        self.transactions.remove(txn)
        self._peers.pop(txn, None)
        if isinstance(txn, ServerTransaction):
            server_request = self._server_requests.pop(txn, None)
            if server_request is not None:
                server_request.on_cancel = None  # see the end of ``_service``
        elif isinstance(txn, ClientTransaction):
            self._callbacks.pop(txn, None)
            if isinstance(txn, ClientInviteTransaction):
                self._cancel_pending.pop(txn, None)

    def _transport_error(self, txn: ClientTransaction, reason: str) -> None:
        """The connection for ``txn``'s request could not be made (§17.1.4).

        The transaction ends here (the sans-IO core has no transport-error input) and
        its owner gets a 503 made here, as §8.1.3.1 says to treat the failure.
        """
        callback = self._callbacks.get(txn)
        if callback is None:
            return  # already over: answered, timed out, or failed through another send
        handle = self._timers.pop(txn, None)
        if handle is not None:
            handle.cancel()
        self._forget(txn)
        log.info("transport error", call_id=txn.request.call_id, method=txn.request.method,
                 error=reason)  # fmt: skip
        try:
            callback(txn.request.response(503, TRANSPORT_ERROR))
        except Exception:
            log.exception("response callback failed", call_id=txn.request.call_id)

    def _client_events(self, txn: ClientTransaction, events: list[Event]) -> None:
        callback = self._callbacks.get(txn)
        for event in events:
            response: Response | None = None
            if isinstance(event, ResponseReceived):
                response = event.response
                if isinstance(txn, ClientInviteTransaction):
                    pending = self._cancel_pending.pop(txn, None)
                    if pending is not None and response.status < 200:
                        self._send_cancel(txn, pending)
            elif isinstance(event, Timeout):
                response = txn.request.response(408, NO_RESPONSE)
            if response is not None and callback is not None:
                try:
                    callback(response)
                except Exception:
                    log.exception("response callback failed", call_id=txn.request.call_id)

    def _fire(self, txn: Transaction) -> None:
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
                   for txn in self._peers if isinstance(txn, ServerTransaction))  # fmt: skip


def _ignore(response: Response) -> None:
    """Responses to a CANCEL: the INVITE's own response says how it ended (§9.1)."""


def next_hop(request: Request, transport: str) -> Peer | None:
    """Where a new connection for ``request`` goes (§8.1.2, §18.1.1).

    The first Route's URI when there is one (loose routing), else the
    Request-URI: its host and port, 5060 by default (5061 over TLS). For a
    phone that registered over TCP this is its Contact, the address it says
    it listens on: the port its lost connection came from was an ephemeral
    one nobody listens on. Behind NAT neither is reachable, and only the
    connection the phone keeps open works (RFC 5626 outbound would fix that;
    not done). The transport stays the one the binding or gateway names.
    """
    try:
        routes = request.routes
        uri = routes[0].uri if routes else request.request_uri
    except ParseError:
        return None
    if not isinstance(uri, SipUri):
        return None
    port = uri.port or (5061 if transport == "tls" or uri.scheme == "sips" else 5060)
    return Peer(transport, uri.host.strip("[]"), port)


def response_route(via: Via, source: Peer) -> tuple[Peer, Peer | None]:
    """Where a response goes (`response_peer`), and over a stream whose connection is gone,
    where a new connection goes (§18.2.2): the ``received`` address (else the sent-by host)
    at the sent-by port, 5060 by default (5061 over TLS). No fallback over UDP.
    """
    destination = response_peer(via, source)
    if not source.reliable:
        return destination, None
    host = (via.received or via.host).strip("[]")
    port = via.port or (5061 if source.transport == "tls" else 5060)
    return destination, Peer(source.transport, host, port)


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
