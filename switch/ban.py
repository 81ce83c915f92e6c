"""Blocking source addresses that fail authentication too often.

A sliding window per source IP: ``failures`` failed authentications within
``window`` seconds block that IP for ``duration`` seconds. Only the observed
source address counts — never header content, which the attacker controls.
A first 401 challenge is not a failure; the registrar decides what is.
Memory stays bounded under a flood of distinct sources: the table of
counting addresses is capped and the oldest entries are dropped first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BanList:
    def __init__(
        self,
        failures: int,
        window: float,
        duration: float,
        whitelist: Iterable[IPNetwork] = (),
        max_tracked: int = 100_000,
    ) -> None:
        self.failures = failures
        self.window = window
        self.duration = duration
        self.whitelist = tuple(whitelist)
        self.max_tracked = max_tracked
        self._recent: OrderedDict[str, deque[float]] = OrderedDict()
        self._banned: dict[str, float] = {}  # ip -> until

    def is_banned(self, ip: str, now: float) -> bool:
        until = self._banned.get(ip)
        if until is None:
            return False
        if now < until:
            return True
        del self._banned[ip]
        return False

    def record_failure(self, ip: str, now: float) -> bool:
        """Count a failure; True when this one bans the address."""
        if self._whitelisted(ip):
            return False
        times = self._recent.get(ip)
        if times is None:
            times = self._recent[ip] = deque()
            if len(self._recent) > self.max_tracked:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(ip)
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.failures:
            return False
        del self._recent[ip]
        self._banned[ip] = now + self.duration
        return True

    def expire(self, now: float) -> list[str]:
        """Lift bans that are over; returns the addresses unblocked."""
        over = [ip for ip, until in self._banned.items() if until <= now]
        for ip in over:
            del self._banned[ip]
        return over

    @property
    def banned_count(self) -> int:
        return len(self._banned)

    def _whitelisted(self, ip: str) -> bool:
        if not self.whitelist:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.whitelist)
