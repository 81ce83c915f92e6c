"""A pjsua2 phone in its own process: register, wait for the word, unregister, exit.

Run by test_phones.py, never imported by pytest (pjsip's threads and global
state do not belong in the test process). It speaks JSON lines on stdout:

    {"state": "started", "pjsip": "2.14.1"}
    {"state": "registered", "code": 200, "expiration": 60, ...}
        ... waits for a line "unregister" on stdin (or --hold seconds) ...
    {"state": "unregistered", "code": 200, ...}

and exits 0 when both happened, 1 otherwise. pjlib prints a few lines before its
log is configured, so readers take only the lines that start with "{". pjsip's
own log (with the SIP messages) goes to --log. Every wait is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import json
import select
import sys
import threading
import time

import pjsua2 as pj


class Phone(pj.Account):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()
        self.states: list[dict[str, object]] = []

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        # An exception escaping into pjsip's thread aborts the process: report it instead.
        try:
            info = self.info() if callable(self.info) else self.info  # a property here
            state = {
                "code": int(prm.code),
                "reason": str(prm.reason),
                "expiration": int(prm.expiration),
                "active": bool(info.regIsActive),
            }
        except Exception as exc:
            state = {"code": 999, "reason": repr(exc), "expiration": 0, "active": False}
        with self.changed:
            self.states.append(state)
            self.changed.notify_all()

    def wait_for(self, start: int, active: bool, timeout: float) -> dict[str, object] | None:
        """The first state from index `start` on with a final code and this activity."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for state in self.states[start:]:
                    if int(state["code"]) >= 200 and state["active"] is active:  # type: ignore[call-overload]
                        return state
                    if int(state["code"]) >= 300:  # type: ignore[call-overload]
                        return state
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def wait_for_word(word: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready:
            line = sys.stdin.readline()
            if not line or line.strip() == word:
                return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="host:port of the softswitch (UDP)")
    parser.add_argument("--local-port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--domain", default="acme.example")
    parser.add_argument("--expires", type=int, default=60)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    version = ep.version() if callable(ep.version) else ep.version
    say(state="started", pjsip=str(version.full))
    config = pj.EpConfig()
    config.logConfig.level = 5  # level 5 includes the SIP messages sent and received
    config.logConfig.consoleLevel = 0
    config.logConfig.filename = args.log
    config.uaConfig.threadCnt = 1
    config.medConfig.hasIoqueue = True
    ep.libInit(config)
    transport = pj.TransportConfig()
    transport.boundAddress = "127.0.0.1"
    transport.port = args.local_port
    ep.transportCreate(pj.TransportType.UDP, transport)
    ep.libStart()
    # No sound card here, and none needed to register. (A property in pjsua2-pybind11,
    # a method in the SWIG binding.)
    devices = ep.audDevManager
    (devices() if callable(devices) else devices).setNullDev()

    account = pj.AccountConfig()
    account.idUri = f"sip:{args.user}@{args.domain}"
    # acme.example does not resolve: the phone is pointed at the switch as its outbound
    # proxy, and keeps the domain as registrar URI and in To, as a provisioned phone does.
    account.regConfig.registrarUri = f"sip:{args.domain}"
    account.regConfig.timeoutSec = args.expires
    account.regConfig.retryIntervalSec = 0  # a failure is reported, not retried
    account.sipConfig.proxies.append(f"sip:{args.server};lr")
    account.sipConfig.authCreds.append(
        pj.AuthCredInfo("digest", args.domain, args.user, 0, args.password)
    )
    phone = Phone()
    ok = False
    try:
        phone.create(account)
        registered = phone.wait_for(0, True, args.timeout)
        say(state="registered" if registered and registered["code"] == 200 else "failed",
            **(registered or {}))  # fmt: skip
        if registered is None or registered["code"] != 200:
            return 1
        if not wait_for_word("unregister", args.timeout * 3):
            say(state="no-word")
            return 1
        start = len(phone.states)
        phone.setRegistration(False)
        unregistered = phone.wait_for(start, False, args.timeout)
        say(state="unregistered" if unregistered and unregistered["code"] == 200 else "failed",
            **(unregistered or {}))  # fmt: skip
        ok = unregistered is not None and unregistered["code"] == 200
    finally:
        phone.shutdown()
        ep.libDestroy()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
