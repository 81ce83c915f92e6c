"""baresip as a real phone in tests: it talks from a WAV file and records what it hears.

pjsua2 cannot do either here (this wheel has no AudioMediaPlayer/Recorder), so the tests
that must hear the switch use baresip 1.0 (Debian ``baresip``), configured in a folder of
its own with no sound card:

- ``audio_source aufile,FILE``: the microphone is a WAV file, which must be 16-bit mono at
  the codec's rate (8000 Hz for G.711). It must outlast the call: at its end the source
  reports an error and baresip hangs the call up.
- ``audio_player aubridge,nowhere``: a player is needed for the call's audio to start, and
  an aubridge device with no source on it takes the frames and does nothing with them
  (no ALSA, no threads of its own until a source joins).
- ``module sndfile.so`` with ``snd_path``: an audio filter that writes, per call,
  ``dump-<time>-dec.wav`` (what the phone decoded, as it came off the network, before
  the player) and ``dump-<time>-enc.wav`` (what it sent). The decode side runs when a
  packet comes out of baresip's jitter buffer, so the last few packets of a call (the
  buffer's depth, ``jitter_buffer_delay``) may be missing from it.
- ``module cons.so`` with ``cons_listen``: a console on a UDP port; each character of a
  datagram is a key of menu.so's, and a digit pressed during a call is sent as DTMF
  (RFC 4733 when the call has telephone-event). The key is held until the console gets
  the release key (0x04, KEYCODE_REL): only then does the event get its end bit, so
  ``press`` sends each key and its release ``KEY_MS`` apart.
- ``audio_codecs`` in the account line chooses what the phone offers and accepts;
  ``answermode=auto`` answers incoming calls at once; ``-e "/dial URI"`` (menu.so) dials
  when it starts.

SIGTERM hangs up (BYE), unregisters and exits; ``-t`` makes baresip quit by itself even if
the test that started it dies. Every wait here is bounded in time.
"""

from __future__ import annotations

import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pytest

from media.audio import load_wav
from tests.daemon.harness import USERS, Daemon, free_port

MODULES = Path("/usr/lib/baresip/modules")
AUDIO_MODULES = ("g711.so", "aufile.so", "aubridge.so", "sndfile.so")
RTP_PORTS = "20000-29999"
RELEASE = "\x04"  # baresip's KEYCODE_REL
KEY_MS = 120  # how long a key is held, and the pause after it


class Lines:
    """A child's output, line by line, readable with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def next_matching(self, predicate: Callable[[str], object], timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            self.seen.append(line)
            if predicate(line):
                return line
        return None


def require_baresip(*modules: str) -> str:
    """baresip's path; skips the test when it or one of ``modules`` is not installed."""
    path = shutil.which("baresip")
    if path is None:
        pytest.skip("baresip is not installed")
    for module in ("account.so", *modules):
        if not (MODULES / module).exists():
            pytest.skip(f"baresip's {module} is not in {MODULES}")
    return path


class Baresip:
    """One baresip process registered as ``user`` of acme, in ``folder``; see the docstring."""

    def __init__(
        self,
        daemon: Daemon | None,
        folder: Path,
        user: str,
        *,
        source: Path | None = None,
        codecs: Sequence[str] = (),
        answer: bool = False,
        dial: str | None = None,
        keys: bool = False,
        limit: float = 30,
        gateway: tuple[str, Path] | None = None,
    ) -> None:
        """``gateway=(address, pem)``: not a phone of acme but a carrier's gateway on
        ``address`` that registers nowhere and takes calls for the number ``user``, over UDP
        and TCP on `sip_port` and over TLS on the next port (baresip's rule), with the
        certificate and key in ``pem``."""
        program = require_baresip(*(AUDIO_MODULES if source is not None else ()))
        self.folder = folder
        self.user = user
        folder.mkdir(parents=True)
        host = "127.0.0.1" if gateway is None else gateway[0]
        self.sip_port = free_port(host, both=True)
        # Bound to loopback by address (this sandbox's libre cannot read the address of
        # "lo" by name).
        config = [
            "poll_method\tpoll",
            f"sip_listen\t{host}:{self.sip_port}",
            f"net_interface\t{host}",
            f"module_path\t{MODULES}",
            # RTP below the ephemeral range (32768-60999 here), above the ports free_port hands
            # out (10000-19999), and below the daemon's media ports (30000-39999).
            f"rtp_ports\t{RTP_PORTS}",
        ]
        if source is not None:
            (folder / "heard").mkdir()
            config += [
                f"audio_source\taufile,{source}",
                "audio_player\taubridge,nowhere",
                "audio_alert\taubridge,nowhere",
                *(f"module\t{name}" for name in AUDIO_MODULES),
                f"snd_path\t{folder / 'heard'}",
            ]
        self.console: int | None = None
        if keys:
            self.console = free_port(both=True)
            config += ["module\tcons.so", f"cons_listen\t127.0.0.1:{self.console}"]
        config += ["module_app\taccount.so", "module_app\tmenu.so"]
        if gateway is not None:
            config.append(f"sip_certificate\t{gateway[1]}")
            # A call for `user` finds this account by the user part of its address.
            account = f"<sip:{user}@{host}>;regint=0"
        else:
            assert daemon is not None, "a phone registers with a daemon"
            account = (
                f"<sip:{user}@acme.example>;auth_pass={USERS[user]};"
                f'outbound="sip:127.0.0.1:{daemon.sip_port}";regint=60'
            )
        (folder / "config").write_text("\n".join(config) + "\n")
        if codecs:
            account += ";audio_codecs=" + ",".join(codecs)
        if answer:
            account += ";answermode=auto"
        (folder / "accounts").write_text(account + "\n")
        # -s prints the SIP trace; -t quits by itself even if the test dies.
        args = [program, "-f", str(folder), "-s", "-t", str(int(limit))]
        if dial is not None:
            args += ["-e", f"/dial {dial}"]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.output = Lines(self.process.stdout)

    def __repr__(self) -> str:
        return f"<baresip {self.user} in {self.folder}>"

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The next line of output that matches ``pattern`` (a regular expression)."""
        line = self.output.next_matching(lambda text: re.search(pattern, text), timeout)
        assert line is not None, f"{self}: no {pattern!r} in {timeout} s:\n{self.said}"
        return line

    def press(self, keys: str) -> None:
        """Press ``keys`` on its console, one by one: digits during a call go out as DTMF."""
        assert self.console is not None, f"{self} was started without keys=True"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for key in keys:
                for press in (key, RELEASE):
                    sock.sendto(press.encode(), ("127.0.0.1", self.console))
                    time.sleep(KEY_MS / 1000)

    def ready(self, timeout: float = 10) -> None:
        """Started and listening (a gateway registers nowhere: this is what there is)."""
        self.wait_for(r"baresip is ready", timeout)

    def registered(self, timeout: float = 10) -> None:
        self.wait_for(r"\{0/UDP/v4\} 200 OK", timeout)

    def established(self, timeout: float = 10) -> None:
        self.wait_for(r"Call established", timeout)

    def call_ended(self, timeout: float = 10) -> None:
        self.wait_for(r"Call with \S+ terminated", timeout)

    @property
    def said(self) -> str:
        """Everything it printed so far (what the waits have read)."""
        return "".join(self.output.seen)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM (a call in progress is hung up with BYE), and its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.output.next_matching(lambda _: False, 0.5)  # the rest of its output, for errors
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def _dump(self, side: str) -> npt.NDArray[np.int16]:
        found = sorted((self.folder / "heard").glob(f"dump-*-{side}.wav"))
        assert len(found) == 1, f"{self}: expected one call's {side} dump, found {found}"
        return load_wav(found[0])

    def heard(self) -> npt.NDArray[np.int16]:
        """What the phone decoded during its call (after ``stop``: the file is complete)."""
        return self._dump("dec")

    def sent(self) -> npt.NDArray[np.int16]:
        """What the phone encoded and sent during its call."""
        return self._dump("enc")


class Phones:
    """baresip phones started by one test, in folders under its ``tmp``; all killed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Baresip] = []

    def start(self, daemon: Daemon | None, user: str, **kw: Any) -> Baresip:
        phone = Baresip(daemon, self.tmp / f"baresip-{user}-{len(self.started)}", user, **kw)
        self.started.append(phone)
        return phone

    def kill_all(self) -> None:
        for phone in self.started:
            phone.kill()


def phones_for(tmp: Path) -> Iterator[Phones]:
    """The body of the ``baresip`` fixture (conftest.py)."""
    phones = Phones(tmp)
    try:
        yield phones
    finally:
        phones.kill_all()
