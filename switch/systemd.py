"""Tell systemd how the daemon is doing: the sd_notify protocol (`config/softswitch.service`).

With `Type=notify` systemd hands the service a datagram socket in `$NOTIFY_SOCKET` and waits
for `READY=1` before it counts the unit started, so `systemctl start` returns (and units
ordered after it start) only once SIP and HTTP listen. `RELOADING=1` / `STOPPING=1` show in
`systemctl status` while a SIGHUP is applied or calls are drained, and `STATUS=` is the
free-text line there. With `WatchdogSec=` set, `WATCHDOG=1` must come at least that often or
systemd kills and restarts the daemon: `Notifier.watchdog` sends it from a task of the
event loop, so it stops when the loop stops turning (a hang), not when a store is slow.

Outside systemd (`$NOTIFY_SOCKET` unset) every call does nothing. Nothing here may fail the
daemon: a notification that cannot be sent is logged once and dropped.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger()


def _address(value: str) -> str | bytes | None:
    """The socket address `$NOTIFY_SOCKET` names: a path, or "@name" in the abstract space."""
    if value.startswith("/"):
        return value
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return None  # vsock: (VMs) and anything newer: not ours to guess


class Notifier:
    """The daemon's end of sd_notify; `environ` is read once (tests pass their own)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        if env.get("NOTIFY_SOCKET") and self.address is None:
            log.warning("NOTIFY_SOCKET not understood, not notifying", value=env["NOTIFY_SOCKET"])
        self.watchdog_seconds: float | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and pid in (None, "", str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1e6
        self._failed = False

    @classmethod
    def from_environment(cls) -> Notifier:
        """Read the variables systemd set, and unset them (as `sd_notify(1, ...)` does): a
        child (a media worker) must not speak for the service nor feed its watchdog."""
        notifier = cls()
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send `KEY=value` lines (`notify(READY=1, STATUS="...")`); False if not sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd", error=str(exc))
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify(READY=1, STATUS=status)

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) tell this reload from an older
        # one; older versions ignore it.
        self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str) -> None:
        self.notify(STOPPING=1, STATUS=status)

    async def watchdog(self) -> None:
        """Ping twice per watchdog period until cancelled (returns at once without one)."""
        if self.watchdog_seconds is None or self.address is None:
            return
        while True:
            self.notify(WATCHDOG=1)
            await asyncio.sleep(self.watchdog_seconds / 2)
