"""Prometheus metrics of the switch (names are stable: see DESIGN.md).

One registry per daemon, so tests can run several daemons in one process
without the global registry's duplicate-name errors. No per-call or
per-user labels: cardinality must stay bounded whatever peers send.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# Methods we count by name; anything else is "other" so a peer inventing
# methods cannot grow the label set.
KNOWN_METHODS = frozenset(
    (
        "ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS",
        "PRACK", "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE",
    )
)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.registrations = Gauge(
            "softswitch_registrations", "Active registration bindings", ["tenant"], registry=r
        )
        self.sip_requests = Counter(
            "softswitch_sip_requests", "SIP requests received", ["method"], registry=r
        )
        self.sip_responses = Counter(
            "softswitch_sip_responses", "SIP responses sent and received", ["code"], registry=r
        )
        self.sip_parse_errors = Counter(
            "softswitch_sip_parse_errors", "Messages that failed to parse", registry=r
        )
        self.auth_failures = Counter(
            "softswitch_auth_failures", "Failed digest authentications", registry=r
        )
        self.banned_sources = Gauge(
            "softswitch_banned_sources", "Source addresses currently blocked", registry=r
        )
        self.calls_active = Gauge(
            "softswitch_calls_active", "Calls being set up or connected", registry=r
        )
        self.calls_total = Counter(
            "softswitch_calls", "Calls ended, by disposition", ["disposition"], registry=r
        )
        self.transfers_total = Counter(
            "softswitch_transfers",
            "Call transfers (REFER, INVITE with Replaces), by kind and result",
            ["kind", "result"],
            registry=r,
        )
        self.dropped_from_banned = Counter(
            "softswitch_banned_packets", "Packets dropped from blocked sources", registry=r
        )

        # Each label's series, looked up once: `labels()` takes a lock and builds its key on
        # every call, and these two count every SIP message. Bounded: the known methods and
        # "other", and the status codes 100-699 (the parser refuses others).
        self._requests: dict[str, Counter] = {}
        self._responses: dict[int, Counter] = {}

    def request(self, method: str) -> None:
        series = self._requests.get(method)
        if series is None:
            label = method if method in KNOWN_METHODS else "other"
            series = self.sip_requests.labels(label)
            if label != "other":  # "other" methods are the peer's to invent: not kept
                self._requests[method] = series
        series.inc()

    def response(self, status: int) -> None:
        series = self._responses.get(status)
        if series is None:
            series = self._responses[status] = self.sip_responses.labels(str(status))
        series.inc()
