"""SIP dialogs as sans-IO state (RFC 3261 §12, §13.2.2.4, §14).

A ``Dialog`` is the peer-to-peer relationship one INVITE sets up: Call-ID,
local and remote tags (the dialog id, §12), local and remote CSeq numbers,
the local and remote URIs (From/To), the remote target (the peer's Contact)
and the route set (Record-Route). It is created on the UAS side from an
INVITE and the response we send with a To tag (``Dialog.uas``, §12.1.1), on
the UAC side from the INVITE we sent and a response with a To tag
(``Dialog.uac``, §12.1.2): early for a 1xx, confirmed for a 2xx.

It builds in-dialog requests (``request``, §12.2.1.1: BYE, re-INVITE …; and
``ack`` for a 2xx, §13.2.2.4) and checks in-dialog requests it is given
(``receive_request``, §12.2.2: CSeq order, target refresh).

States: ``DialogState.EARLY`` → ``CONFIRMED`` → ``TERMINATED``.

Not done here: finding the dialog of a message (the caller indexes dialogs
by ``DialogId``; ``uas_id`` and ``uac_id`` compute the ids), the Via of
requests and where they go (the transport layer adds Via; ``next_hop`` is
the URI to resolve, §8.1.2), session timers, PRACK, and the SDP offer/answer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from switch.sip.errors import ParseError
from switch.sip.headers import NameAddr
from switch.sip.message import Headers, Request, Response
from switch.sip.uri import SipUri, Uri

DEFAULT_MAX_FORWARDS = 70  # §8.1.1.6
# Methods that do not take a new local CSeq number: ACK and CANCEL reuse the
# number of the request they belong to (§13.2.2.4, §9.1).
_NO_NEW_CSEQ = frozenset({"ACK", "CANCEL"})
# Requests that refresh the remote target when they succeed (§12.2, RFC 3311, RFC 3515).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    """§12: Call-ID, local tag and remote tag."""

    call_id: str
    local_tag: str
    remote_tag: str


def uas_id(request: Request) -> DialogId | None:
    """The id of the dialog an incoming request belongs to, as its UAS sees it (§12.2.2)."""
    to_tag, from_tag = request.to.tag, request.from_.tag
    if to_tag is None or from_tag is None:
        return None
    return DialogId(request.call_id, to_tag, from_tag)


def uac_id(response: Response) -> DialogId | None:
    """The id of the dialog a response to our request belongs to (§12.1.2)."""
    to_tag, from_tag = response.to.tag, response.from_.tag
    if to_tag is None or from_tag is None:
        return None
    return DialogId(response.call_id, from_tag, to_tag)


class Dialog:
    """One dialog of one user agent; see the module docstring."""

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local: NameAddr,
        remote: NameAddr,
        local_seq: int,
        remote_seq: int | None,
        remote_target: Uri,
        route_set: tuple[NameAddr, ...],
        local_contact: str,
        secure: bool,
        state: DialogState,
    ) -> None:
        self.id = DialogId(call_id, local_tag, remote_tag)
        self.local = local  # From of our requests, with our tag
        self.remote = remote  # To of our requests, with the peer's tag
        self.local_seq = local_seq
        self.remote_seq = remote_seq  # None until the peer sends a request (§12.1.2)
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_contact = local_contact
        self.secure = secure
        self.state = state

    @property
    def call_id(self) -> str:
        return self.id.call_id

    # -- creation (§12.1) ----------------------------------------------------

    @classmethod
    def uas(cls, request: Request, response: Response, local_contact: str) -> Dialog:
        """The UAS dialog of ``request`` (INVITE) answered by ``response`` (§12.1.1).

        The route set is the request's Record-Route in order; the remote
        target its Contact; the remote CSeq its CSeq number.
        """
        to_tag, from_tag = response.to.tag, request.from_.tag
        if to_tag is None:
            raise ValueError("a dialog-creating response needs a To tag (§12.1.1)")
        return cls(
            call_id=request.call_id,
            local_tag=to_tag,
            remote_tag=from_tag or "",  # RFC 2543 peers may omit it (§12.1.1)
            local=response.to,
            remote=request.from_,
            local_seq=0,  # "empty" (§12.1.1): our first request picks any number
            remote_seq=request.cseq.number,
            remote_target=_contact_uri(request),
            route_set=tuple(request.record_routes),
            local_contact=local_contact,
            secure=_is_sips(request.request_uri),
            state=_state_for(response.status),
        )

    @classmethod
    def uac(cls, request: Request, response: Response) -> Dialog:
        """The UAC dialog of the ``request`` we sent and a ``response`` with a To tag (§12.1.2).

        The route set is the response's Record-Route in reverse; the remote
        target its Contact; the local CSeq the request's.
        """
        from_tag, to_tag = request.from_.tag, response.to.tag
        if from_tag is None or to_tag is None:
            raise ValueError("a UAC dialog needs the From tag and the response's To tag")
        contact = request.headers.get("Contact")
        if contact is None:
            raise ValueError("a dialog-creating request needs our Contact (§8.1.1.8)")
        return cls(
            call_id=request.call_id,
            local_tag=from_tag,
            remote_tag=to_tag,
            local=request.from_,
            remote=response.to,
            local_seq=request.cseq.number,
            remote_seq=None,
            remote_target=_contact_uri(response),
            route_set=tuple(reversed(response.record_routes)),
            local_contact=contact,
            secure=_is_sips(request.request_uri),
            state=_state_for(response.status),
        )

    # -- life cycle ----------------------------------------------------------

    def receive_response(self, response: Response) -> None:
        """A response to a request of this dialog (§12.1.2, §12.2.1.2).

        A 2xx to the INVITE confirms an early dialog; a 2xx to a target refresh
        replaces the remote target; 481 and 408 end the dialog (§12.2.1.2).
        """
        status = response.status
        if status in (408, 481):
            self.state = DialogState.TERMINATED
            return
        if not 101 <= status < 300:
            return
        if self.state is DialogState.EARLY and status >= 200:
            self.state = DialogState.CONFIRMED
            # the 2xx's Record-Route is the route set (§12.1.2, §13.2.2.4)
            self.route_set = tuple(reversed(response.record_routes))
        if response.cseq.method in TARGET_REFRESH and response.contacts:
            self.remote_target = _contact_uri(response)

    def receive_request(self, request: Request) -> int | None:
        """Check an in-dialog request (§12.2.2); a status to reject it with, or None.

        A CSeq lower than the last one seen is out of order: 500. ACK and
        CANCEL carry the number of the request they belong to and are not
        checked. A target refresh request replaces the remote target.
        """
        number = request.cseq.number
        if request.method not in _NO_NEW_CSEQ:
            if self.remote_seq is not None and number <= self.remote_seq:
                return 500
            self.remote_seq = number
        if request.method in TARGET_REFRESH and request.contacts:
            self.remote_target = _contact_uri(request)
        if request.method == "BYE":
            self.state = DialogState.TERMINATED
        return None

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED

    # -- requests within the dialog (§12.2.1.1) ------------------------------

    @property
    def next_hop(self) -> Uri:
        """The URI a request of this dialog goes to before DNS (§8.1.2, §12.2.1.1)."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def request(
        self, method: str, *, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """A new request in this dialog, without Via (§12.2.1.1).

        Takes the next local CSeq number; a re-INVITE and a BYE are built the
        same way. For the ACK of a 2xx use ``ack``, for CANCEL §9.1.
        """
        if method in _NO_NEW_CSEQ:
            raise ValueError(f"{method} reuses its request's CSeq; use ack() or build a CANCEL")
        self.local_seq += 1
        return self._build(method, self.local_seq, body, content_type)

    def ack(
        self, invite_cseq: int, *, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """The ACK for a 2xx to the INVITE with CSeq ``invite_cseq`` (§13.2.2.4)."""
        return self._build("ACK", invite_cseq, body, content_type)

    def _build(self, method: str, seq: int, body: bytes, content_type: str | None) -> Request:
        uri, routes = self._request_uri_and_routes()
        headers = Headers()
        headers.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
        for route in routes:
            headers.add("Route", route)
        headers.add("From", str(self.local))
        headers.add("To", str(self.remote))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{seq} {method}")
        if method in TARGET_REFRESH:
            headers.add("Contact", self.local_contact)
        if body and content_type is not None:
            headers.add("Content-Type", content_type)
        return Request(method, uri, headers, body)

    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        """§12.2.1.1: loose routing keeps the target; a strict router takes its place."""
        if not self.route_set:
            return str(self.remote_target), []
        first = self.route_set[0]
        if isinstance(first.uri, SipUri) and first.uri.param("lr") is not None:
            return str(self.remote_target), [str(r) for r in self.route_set]
        # Strict routing (RFC 2543): the first route becomes the Request-URI,
        # without the parameters a Request-URI may not carry (§19.1.1 table).
        uri = first.uri
        if isinstance(uri, SipUri):
            allowed = ("transport", "user", "maddr", "ttl", "lr")
            params = tuple(p for p in uri.params if p[0] in allowed)
            uri = SipUri(uri.scheme, uri.user, uri.host, uri.port, uri.password, params)
        routes = [str(r) for r in self.route_set[1:]]
        routes.append(f"<{self.remote_target}>")
        return str(uri), routes

    def __repr__(self) -> str:
        return f"<Dialog {self.call_id} {self.state.value}>"


def _contact_uri(message: Request | Response) -> Uri:
    contacts = message.contacts
    if not contacts or contacts[0].address is None:
        raise ParseError("a dialog needs a Contact (§12.1)")
    return contacts[0].address.uri


def _is_sips(uri: Uri) -> bool:
    return isinstance(uri, SipUri) and uri.scheme == "sips"


def _state_for(status: int) -> DialogState:
    if 100 < status < 200:
        return DialogState.EARLY
    if 200 <= status < 300:
        return DialogState.CONFIRMED
    raise ValueError(f"a {status} response creates no dialog (§12.1)")


__all__ = [
    "TARGET_REFRESH",
    "Dialog",
    "DialogId",
    "DialogState",
    "uac_id",
    "uas_id",
]
