"""Q.850 cause values and their SIP counterparts (RFC 3398 §7.2.4.1, §8.2.6.1; RFC 3326).

Call control says why a leg ends with a Q.850 cause, the vocabulary PBXes
and carriers share (a CDR's hangup cause, a gateway's ISUP release). On the
wire it travels as ``Reason: Q.850;cause=N;text="..."`` (RFC 3326) on a BYE,
CANCEL or final response, and an unanswered leg's final response status is
the cause's SIP equivalent. A failed attempt's SIP status reads back as a
cause the same way.

Only the causes a softswitch meets are named; the tables follow RFC 3398,
with two choices of ours: normal clearing of an unanswered leg is 480 (the
RFC has no status for it), and our own ring timeout is cause 19 "no answer",
not 18 "no user responding" (the phone did ring).
"""

from __future__ import annotations

import enum


class Cause(enum.IntEnum):
    UNALLOCATED_NUMBER = 1
    NO_ROUTE_TO_DESTINATION = 3
    NORMAL_CLEARING = 16
    USER_BUSY = 17
    NO_USER_RESPONSE = 18
    NO_ANSWER = 19
    SUBSCRIBER_ABSENT = 20
    CALL_REJECTED = 21
    NUMBER_CHANGED = 22
    DESTINATION_OUT_OF_ORDER = 27
    INVALID_NUMBER_FORMAT = 28
    NORMAL_UNSPECIFIED = 31
    NO_CIRCUIT_AVAILABLE = 34
    NETWORK_OUT_OF_ORDER = 38
    TEMPORARY_FAILURE = 41
    SWITCH_CONGESTION = 42
    BEARER_CAPABILITY_NOT_IMPLEMENTED = 65
    SERVICE_NOT_IMPLEMENTED = 79
    INCOMPATIBLE_DESTINATION = 88
    RECOVERY_ON_TIMER_EXPIRY = 102
    INTERWORKING = 127

    @property
    def text(self) -> str:
        return self.name.replace("_", " ").capitalize()

    def reason(self) -> str:
        """The RFC 3326 Reason header value for this cause."""
        return f'Q.850;cause={self.value};text="{self.text}"'

    def status(self) -> int:
        """The final response for an unanswered leg ended with this cause (RFC 3398 §7.2.4.1)."""
        return _STATUS.get(self, 500 if self >= Cause.INTERWORKING else 480)


_STATUS = {
    Cause.UNALLOCATED_NUMBER: 404,
    Cause.NO_ROUTE_TO_DESTINATION: 404,
    Cause.NORMAL_CLEARING: 480,
    Cause.USER_BUSY: 486,
    Cause.NO_USER_RESPONSE: 408,
    Cause.NO_ANSWER: 480,
    Cause.SUBSCRIBER_ABSENT: 480,
    Cause.CALL_REJECTED: 403,
    Cause.NUMBER_CHANGED: 410,
    Cause.DESTINATION_OUT_OF_ORDER: 502,
    Cause.INVALID_NUMBER_FORMAT: 484,
    Cause.NORMAL_UNSPECIFIED: 480,
    Cause.NO_CIRCUIT_AVAILABLE: 503,
    Cause.NETWORK_OUT_OF_ORDER: 503,
    Cause.TEMPORARY_FAILURE: 503,
    Cause.SWITCH_CONGESTION: 503,
    Cause.BEARER_CAPABILITY_NOT_IMPLEMENTED: 488,
    Cause.SERVICE_NOT_IMPLEMENTED: 501,
    Cause.INCOMPATIBLE_DESTINATION: 488,
    Cause.RECOVERY_ON_TIMER_EXPIRY: 504,
    Cause.INTERWORKING: 500,
}

# RFC 3398 §8.2.6.1: the cause a failed INVITE's final status stands for.
_CAUSE = {
    400: Cause.TEMPORARY_FAILURE,
    401: Cause.CALL_REJECTED,
    402: Cause.CALL_REJECTED,
    403: Cause.CALL_REJECTED,
    404: Cause.UNALLOCATED_NUMBER,
    405: Cause.SERVICE_NOT_IMPLEMENTED,
    407: Cause.CALL_REJECTED,
    408: Cause.RECOVERY_ON_TIMER_EXPIRY,
    410: Cause.NUMBER_CHANGED,
    480: Cause.NO_USER_RESPONSE,
    481: Cause.TEMPORARY_FAILURE,
    484: Cause.INVALID_NUMBER_FORMAT,
    485: Cause.UNALLOCATED_NUMBER,
    486: Cause.USER_BUSY,
    487: Cause.NORMAL_CLEARING,
    488: Cause.INCOMPATIBLE_DESTINATION,
    500: Cause.TEMPORARY_FAILURE,
    501: Cause.SERVICE_NOT_IMPLEMENTED,
    502: Cause.DESTINATION_OUT_OF_ORDER,
    503: Cause.TEMPORARY_FAILURE,
    504: Cause.RECOVERY_ON_TIMER_EXPIRY,
    600: Cause.USER_BUSY,
    603: Cause.CALL_REJECTED,
    604: Cause.UNALLOCATED_NUMBER,
    606: Cause.INCOMPATIBLE_DESTINATION,
}


def cause_of(status: int) -> Cause:
    """The Q.850 cause of a final failure ``status`` (RFC 3398 §8.2.6.1)."""
    return _CAUSE.get(status, Cause.INTERWORKING)


def parse_reason(value: str | None) -> Cause | None:
    """The Q.850 cause in a Reason header (RFC 3326), if it has a known one."""
    for item in (value or "").split(","):
        protocol, _, params = item.partition(";")
        if protocol.strip().upper() != "Q.850":
            continue
        for param in params.split(";"):
            name, _, number = param.partition("=")
            if name.strip().lower() == "cause" and number.strip().isdigit():
                try:
                    return Cause(int(number))
                except ValueError:
                    return None
    return None
