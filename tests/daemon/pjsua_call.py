"""A pjsua2 phone in its own process that makes or answers one call through the switch.

Run by test_calls.py, never imported by pytest (pjsip's threads and global
state do not belong in the test process). Null audio device. It registers
(over UDP, or TCP with ``--transport tcp``), then with ``--call URI`` calls,
talks for ``--talk`` seconds and hangs up; with ``--answer`` it waits for a
call, answers it (180, then 200) and waits for the other side to hang up.
It prints JSON lines on stdout:

    {"state": "registered"}  {"state": "confirmed"}  {"state": "disconnected", "code": 200}

and exits 0 when the call was confirmed and then disconnected. Every wait is
bounded by --timeout; pjsip's own log goes to --log.

Transfer: with ``--answer --xfer URI`` the phone answers, then transfers the
call blind (``Call.xfer``: REFER) to URI; with ``--xfer-replaces URI`` it calls
URI itself and transfers the first call to that second one (``xferReplaces``:
REFER with Replaces). It reports each NOTIFY as {"xfer": code, "final": bool}
and, as pjsua's own application does, hangs up the transferred call on a 2xx
(unless ``--stay``; ``--hold-first`` holds the call before it transfers, as
desk phones do). ``--report-media`` prints each change of the audio stream's
status. ``--busy`` answers 486; ``--ring-only`` answers 180 and
never 200 (a phone nobody picks up). A caller with ``--wait-word`` hangs up
when a line "hangup" comes on stdin (or after --talk seconds). A caller with
``--expect CODE`` expects its call to fail with that status, unanswered
(``--cancel-after S``: it gives up itself after S s, a CANCEL, so 487).
``--dtmf DIGITS`` presses keys (RFC 4733, pjsua's default) ``--dtmf-after`` s
after the answer. (This pjsua2 wheel has no AudioMediaPlayer/Recorder and no
stream statistics: what a phone hears is checked with baresip.)
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import threading
import time

import pjsua2 as pj
from pjsua_phone import wait_for_word  # the folder of this script is on sys.path

# pjsua2 2.14's Call destructor asserts when its call is already gone (after a
# hangup, or libDestroy): the objects are kept to the end and the process
# leaves with os._exit, so no destructor runs.
KEEP: list[object] = []


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


class Call(pj.Call):  # type: ignore[misc]
    report_media = False  # --hold: print each change of the audio stream's status
    stay = False  # --stay: keep the call after a successful transfer

    def __init__(self, account: pj.Account, call_id: int = -1) -> None:
        super().__init__(account, call_id)
        self.confirmed = threading.Event()
        self.disconnected = threading.Event()
        self.media_status = ""
        self.code = 0  # the last status code when disconnected

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        try:
            info = self.info() if callable(self.info) else self.info
            for media in info.media:
                status = pj.CallMediaStatus(media.status).name.lower()
                audio = media.type == pj.MediaType.AUDIO
                if self.report_media and audio and status != self.media_status:
                    self.media_status = status
                    say(media=status)  # active, local_hold, remote_hold, ...
        except Exception as exc:
            say(state="error", error=repr(exc))

    def onCallTransferStatus(self, prm: pj.OnCallTransferStatusParam) -> None:
        try:
            code, final = int(prm.statusCode), bool(prm.finalNotify)
            say(xfer=code, final=final)
            if final and 200 <= code < 300 and not self.stay:
                self.hangup(pj.CallOpParam())
        except Exception as exc:
            say(state="error", error=repr(exc))

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        try:
            info = self.info() if callable(self.info) else self.info  # a property here
            if info.state == pj.InvState.CONFIRMED:
                say(state="confirmed")
                self.confirmed.set()
            elif info.state == pj.InvState.DISCONNECTED:
                self.code = int(info.lastStatusCode)
                say(state="disconnected", code=self.code)
                self.disconnected.set()
        except Exception as exc:  # an exception escaping into pjsip's thread aborts
            say(state="error", error=repr(exc))


class Account(pj.Account):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.registered = threading.Event()
        self.calls: list[Call] = []
        self.incoming = threading.Event()
        self.busy = False
        self.ring_only = False

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        if int(prm.code) == 200 and int(prm.expiration) > 0:
            self.registered.set()

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        try:
            call = Call(self, prm.callId)
            self.calls.append(call)
            KEEP.append(call)
            ringing = pj.CallOpParam(True)
            ringing.statusCode = pj.StatusCode.RINGING
            call.answer(ringing)
            self.incoming.set()
            if self.ring_only:
                return
            ok = pj.CallOpParam(True)
            ok.statusCode = pj.StatusCode.BUSY_HERE if self.busy else pj.StatusCode.OK
            call.answer(ok)
            self.incoming.set()
        except Exception as exc:
            say(state="error", error=repr(exc))


def main() -> int:
    # A crash, or the SIGABRT a test sends a phone that hangs, prints every thread's stack.
    faulthandler.enable()
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="host:port of the softswitch")
    parser.add_argument("--local-port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--domain", default="acme.example")
    parser.add_argument("--call", help="the URI to call; without it, answer one call")
    parser.add_argument("--talk", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--log", required=True)
    parser.add_argument(
        "--hold", action="store_true", help="report hold states; a caller holds, then resumes"
    )
    parser.add_argument("--xfer", help="answer, then transfer the call to this URI (blind)")
    parser.add_argument("--xfer-replaces", help="answer, call this URI, then transfer (attended)")
    parser.add_argument("--xfer-after", type=float, default=1.0)
    parser.add_argument("--stay", action="store_true", help="no hangup after a transfer")
    parser.add_argument(
        "--hold-first", action="store_true", help="hold the call before transferring it"
    )
    parser.add_argument(
        "--report-media", action="store_true", help="report the audio stream's status changes"
    )
    parser.add_argument("--busy", action="store_true", help="answer 486 Busy Here")
    parser.add_argument("--wait-word", action="store_true", help='hang up on "hangup" (stdin)')
    parser.add_argument(
        "--transport", choices=("udp", "tcp"), default="udp", help="register and call over this"
    )
    parser.add_argument("--ring-only", action="store_true", help="answer 180, never 200")
    parser.add_argument("--expect", type=int, help="the caller's call must fail with this code")
    parser.add_argument("--cancel-after", type=float, help="the caller gives up after S s")
    parser.add_argument("--dtmf", help="keys to press (RFC 4733) once the call is answered")
    parser.add_argument("--dtmf-after", type=float, default=1.0)
    args = parser.parse_args()
    Call.report_media = args.hold or args.report_media
    Call.stay = args.stay

    ep = pj.Endpoint()
    ep.libCreate()
    config = pj.EpConfig()
    config.logConfig.level = 5
    config.logConfig.consoleLevel = 0
    config.logConfig.filename = args.log
    config.uaConfig.threadCnt = 1
    ep.libInit(config)
    transport = pj.TransportConfig()
    transport.boundAddress = "127.0.0.1"
    transport.port = args.local_port
    kind = pj.TransportType.TCP if args.transport == "tcp" else pj.TransportType.UDP
    ep.transportCreate(kind, transport)
    ep.libStart()
    devices = ep.audDevManager
    (devices() if callable(devices) else devices).setNullDev()

    account_config = pj.AccountConfig()
    account_config.idUri = f"sip:{args.user}@{args.domain}"
    account_config.regConfig.registrarUri = f"sip:{args.domain}"
    account_config.regConfig.retryIntervalSec = 0
    over = "" if args.transport == "udp" else f";transport={args.transport}"
    account_config.sipConfig.proxies.append(f"sip:{args.server};lr{over}")
    account_config.sipConfig.authCreds.append(
        pj.AuthCredInfo("digest", args.domain, args.user, 0, args.password)
    )
    account = Account()
    account.busy, account.ring_only = args.busy, args.ring_only
    KEEP.append(account)
    ok = False
    try:
        account.create(account_config)
        if not account.registered.wait(args.timeout):
            say(state="not-registered")
            return 1
        say(state="registered")
        if args.call:
            call = Call(account)
            account.calls.append(call)
            KEEP.append(call)
            call.makeCall(args.call, pj.CallOpParam(True))
            if args.expect is not None:
                if args.cancel_after is not None and not call.disconnected.wait(args.cancel_after):
                    call.hangup(pj.CallOpParam())  # not answered yet: a CANCEL
                ended = call.disconnected.wait(args.timeout * 3)
                ok = ended and call.code == args.expect and not call.confirmed.is_set()
                return 0 if ok else 1
            if not call.confirmed.wait(args.timeout):
                say(state="not-confirmed")
                return 1
            if args.dtmf:
                time.sleep(args.dtmf_after)
                call.dialDtmf(args.dtmf)
                say(dtmf=args.dtmf)
            if args.wait_word:
                wait_for_word("hangup", args.talk)
            else:
                call.disconnected.wait(args.talk)  # the other end may hang up first
            if args.hold:
                call.setHold(pj.CallOpParam(True))  # re-INVITE with a=sendonly
                time.sleep(args.talk)
                resume = pj.CallOpParam(True)
                resume.opt.flag = 1  # PJSUA_CALL_UNHOLD: a re-INVITE with a=sendrecv
                call.reinvite(resume)
                time.sleep(args.talk)
            if not call.disconnected.is_set():
                call.hangup(pj.CallOpParam())
        elif not account.incoming.wait(args.timeout * 2):
            say(state="no-call")
            return 1
        elif args.xfer or args.xfer_replaces:
            first = account.calls[0]
            if not first.confirmed.wait(args.timeout):
                say(state="not-confirmed")
                return 1
            time.sleep(args.xfer_after)
            if args.hold_first:  # as desk phones do before a transfer
                first.setHold(pj.CallOpParam(True))
                time.sleep(0.5)
            if args.xfer:
                first.xfer(args.xfer, pj.CallOpParam(True))
            else:
                second = Call(account)
                account.calls.append(second)
                KEEP.append(second)
                second.makeCall(args.xfer_replaces, pj.CallOpParam(True))
                if not second.confirmed.wait(args.timeout):
                    say(state="not-confirmed")
                    return 1
                time.sleep(args.xfer_after)
                first.xferReplaces(second, pj.CallOpParam(True))
        calls = account.calls
        ok = all(c.disconnected.wait(args.timeout * 3) for c in calls) and all(
            c.confirmed.is_set() or args.busy or args.ring_only for c in calls
        )
    finally:
        account.shutdown()
        ep.libDestroy()
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
