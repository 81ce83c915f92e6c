"""What `bench/media_relay.py` sends its calls through: softswitch's relay, rtpengine, or the
echo reflector. Each runs as its own process, pinned to one core, started fresh for every
measurement point and killed (its whole process group) afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from procstat import CLK_TCK, cpu_seconds, process_tree

HERE = Path(__file__).resolve().parent


class Hosts:
    """Where the relays and the phones (the generator's sockets) are: by default both on this
    host's loopback; `two_hosts` puts the relays in a network namespace of their own behind
    a veth pair, so that each side's kernel receive work runs on that side's core."""

    relay = "127.0.0.1"
    phones = "127.0.0.1"
    netns: str | None = None


HOSTS = Hosts()


@contextlib.contextmanager
def receive_on(core: int) -> Iterator[None]:
    """Loopback's receive work (the IP/UDP receive path, and with kernel forwarding the
    forwarding) on `core` instead of in each sender's system call (RPS on lo): the relay's
    core then pays for what reaches the relay host, as a server's NIC makes it, and the
    generator's core only sends and receives."""
    knob = Path("/sys/class/net/lo/queues/rx-0/rps_cpus")
    before = knob.read_text().strip()
    knob.write_text(f"{1 << core:x}\n")
    try:
        yield
    finally:
        knob.write_text(before + "\n")


@contextlib.contextmanager
def two_hosts(relay_core: int, gen_core: int) -> Iterator[None]:
    """The relay host (netns `ssbench`, 10.99.0.1) and the phones' host (this one, 10.99.0.2)
    on one veth link. On loopback a packet's receive path (and with kernel forwarding, the
    forwarding itself) runs in the sender's system call, on the sender's core; between two
    hosts it runs on the receiver. RPS on each end of the link sends received packets to that
    side's core: what a relay server's NIC does for it, for rtpengine and for us alike."""
    ns, here, there = "ssbench", "ssbench0", "ssbench1"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    commands = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
        ["ip", "link", "set", there, "netns", ns],
        ["ip", "addr", "add", "10.99.0.2/24", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "-n", ns, "addr", "add", "10.99.0.1/24", "dev", there],
        ["ip", "-n", ns, "link", "set", there, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["sh", "-c", f"echo {1 << gen_core:x} > /sys/class/net/{here}/queues/rx-0/rps_cpus"],
        ["ip", "netns", "exec", ns, "sh", "-c",
         f"echo {1 << relay_core:x} > /sys/class/net/{there}/queues/rx-0/rps_cpus"],
    ]  # fmt: skip
    try:
        for cmd in commands:
            subprocess.run(cmd, check=True, capture_output=True)
        HOSTS.relay, HOSTS.phones, HOSTS.netns = "10.99.0.1", "10.99.0.2", ns
        yield
    finally:
        HOSTS.relay = HOSTS.phones = "127.0.0.1"
        HOSTS.netns = None
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


SERVER = HERE / "media_relay_server.py"
# Below Linux's ephemeral ports (32768-60999), where the generator's own sockets live:
# 4 ports per call, room for 5750 calls.
PORT_MIN, PORT_MAX = 9000, 31999


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_ticks(pid: int) -> int:
    """User + system CPU of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tree_cpu_ticks(pid: int) -> int:
    """`cpu_ticks` of a process and every process it started (media workers)."""
    return round(cpu_seconds(process_tree(pid)) * CLK_TCK)


class Target:
    name = ""
    label = ""
    reflects = False  # packets come back to their sender (echo) instead of the other leg
    proc: subprocess.Popen[bytes] | None = None

    def __init__(self, core: int | None, verbose: bool) -> None:
        self.core = core
        self.verbose = verbose
        self.log = tempfile.TemporaryFile(prefix=f"bench-{self.name}-")  # noqa: SIM115 (lives with the target)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        core = self.core

        def pin() -> None:
            if core is not None:
                os.sched_setaffinity(0, {core})  # threads started later inherit it

        if HOSTS.netns is not None:
            cmd = ["ip", "netns", "exec", HOSTS.netns, *cmd]
        if self.verbose:
            print(f"  $ {' '.join(cmd)}", flush=True)
        self.proc = subprocess.Popen(
            cmd, stderr=self.log, preexec_fn=pin, start_new_session=True, **kwargs
        )
        return self.proc

    def start(self) -> None:
        raise NotImplementedError

    def calls(
        self, n: int, a: tuple[str, int], b: tuple[str, int]
    ) -> list[tuple[tuple[str, int], tuple[str, int]]]:
        """Set up n calls whose A phone is at `a` and B phone at `b`; per call, where the A
        phone and the B phone must send their RTP."""
        raise NotImplementedError

    def counters(self) -> str:
        return ""

    def cpu_ticks(self) -> int:
        """CPU of the relay so far (the process, or all of its processes), in clock ticks."""
        return cpu_ticks(self.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin:
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]


class _JsonLines(Target):
    def _request(self, value: dict[str, Any], timeout: float = 120.0) -> Any:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(value).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read(self.proc.stdout)

    def _read(self, stdout: IO[bytes]) -> Any:
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
        return json.loads(line)


class Softswitch(_JsonLines):
    """`media.Relay` as the daemon runs it: latched streams forwarded by the kernel (eBPF,
    `media.kernel`) where the host allows it, the rest by the relay process."""

    name = "softswitch"
    label = "softswitch media.Relay, media.kernel: auto"
    kernel = "auto"

    def start(self) -> None:
        self._start(f"--kernel={self.kernel}")

    def _start(self, *options: str) -> None:
        proc = self._spawn(
            [
                sys.executable,
                str(SERVER),
                "relay",
                f"--host={HOSTS.relay}",
                f"--port-min={PORT_MIN}",
                f"--port-max={PORT_MAX}",
                *options,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout
        hello = self._read(proc.stdout)
        self.loop = hello["loop"]
        self.in_kernel = hello.get("kernel", False)
        if self.kernel == "auto":
            self.label = "softswitch media.Relay, " + (
                "kernel forwarding (eBPF)" if self.in_kernel else "kernel forwarding unavailable"
            )

    def calls(
        self, n: int, a: tuple[str, int], b: tuple[str, int]
    ) -> list[tuple[tuple[str, int], tuple[str, int]]]:
        ports = self._request({"op": "calls", "n": n, "a": list(a), "b": list(b)})["ports"]
        return [((HOSTS.relay, pa), (HOSTS.relay, pb)) for pa, pb in ports]

    def counters(self) -> str:
        t = self._request({"op": "totals"})
        return (
            f"relay counters: in {t['rtp_packets_in']} out {t['rtp_packets_out']} "
            f"lost {t['lost']} foreign {t['foreign_packets']} dropped {t['dropped_packets']}"
        )


class SoftswitchUser(Softswitch):
    """Every packet through the relay process (media.kernel: off)."""

    name = "softswitch-user"
    label = "softswitch media.Relay, media.kernel: off (userspace)"
    kernel = "off"


class SoftswitchWorkers(Softswitch):
    """`media.workers.RelayPool`: the switch-side process hands every session to worker
    processes (all pinned to the relay's core, as the one-process relay is)."""

    name = "softswitch-workers"
    label = "softswitch media.workers"

    def __init__(self, core: int | None, verbose: bool, workers: int = 1) -> None:
        super().__init__(core, verbose)
        self.workers = workers
        self.label = f"softswitch media.workers x{workers}"

    def start(self) -> None:
        self._start(f"--workers={self.workers}", "--kernel=off")

    def cpu_ticks(self) -> int:
        return tree_cpu_ticks(self.pid)


class Floor(Softswitch):
    name = "floor"
    label = "least Python relay: recv_into + send per packet, no latching or counters"

    def start(self) -> None:
        proc = self._spawn(
            [
                sys.executable,
                str(SERVER),
                "floor",
                f"--host={HOSTS.relay}",
                f"--port-min={PORT_MIN}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout
        self.loop = self._read(proc.stdout)["loop"]

    def counters(self) -> str:
        return ""


class Echo(_JsonLines):
    name = "direct"
    label = "no relay: generator -> echo -> generator"
    reflects = True

    def start(self) -> None:
        proc = self._spawn(
            [sys.executable, str(SERVER), "echo", f"--host={HOSTS.relay}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout
        self.ports = self._read(proc.stdout)["ports"]

    def calls(
        self, n: int, a: tuple[str, int], b: tuple[str, int]
    ) -> list[tuple[tuple[str, int], tuple[str, int]]]:
        pa, pb = self.ports
        return [((HOSTS.relay, pa), (HOSTS.relay, pb))] * n


# rtpengine's ng control protocol: "<cookie> <bencoded dict>" over UDP.


def bencode(value: Any) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(type(value))


def bdecode(data: bytes, i: int = 0) -> tuple[Any, int]:
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if c in (b"l", b"d"):
        i += 1
        items = []
        while data[i : i + 1] != b"e":
            item, i = bdecode(data, i)
            items.append(item)
        if c == b"l":
            return items, i + 1
        return {items[k].decode(): items[k + 1] for k in range(0, len(items), 2)}, i + 1
    colon = data.index(b":", i)
    length = int(data[i:colon])
    return data[colon + 1 : colon + 1 + length], colon + 1 + length


def _sdp(port: int) -> str:
    host = HOSTS.phones
    return (
        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=bench\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )


class Rtpengine(Target):
    name = "rtpengine"
    binary = shutil.which("rtpengine") or "/usr/bin/rtpengine"

    @classmethod
    def available(cls) -> bool:
        return os.access(cls.binary, os.X_OK)

    @classmethod
    def version(cls) -> str:
        out = subprocess.run([cls.binary, "--version"], capture_output=True, text=True)
        return (out.stdout + out.stderr).strip().replace("Version: ", "")

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"rtpengine {self.version()} userspace, 1 thread"

    def command(self, ng_port: int) -> list[str]:
        return [
            self.binary,
            "--foreground",
            "--log-stderr",
            "--log-level=4",  # warnings: nothing per packet or per call
            f"--interface={HOSTS.relay}",
            f"--listen-ng={HOSTS.relay}:{ng_port}",
            f"--port-min={PORT_MIN}",
            f"--port-max={PORT_MAX}",
            "--table=-1",  # no kernel forwarding: userspace only
            "--num-threads=1",  # one media/control worker, like our one event loop
            "--media-num-threads=1",
            "--timeout=60",
            "--delete-delay=0",
        ]

    def start(self) -> None:
        self.ng_port = free_udp_port()
        self._spawn(self.command(self.ng_port), stdin=subprocess.DEVNULL)
        self.ng = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ng.settimeout(0.2)
        self._cookie = 0
        deadline = time.monotonic() + 10
        while True:
            try:
                if self._ng({"command": "ping"}).get("result") == b"pong":
                    break
            except (TimeoutError, ConnectionRefusedError):
                pass
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rtpengine did not start:\n{self.log_tail()}")
        self.ng.settimeout(5)

    def _ng(self, message: dict[str, Any]) -> dict[str, Any]:
        self._cookie += 1
        cookie = b"%d_bench" % self._cookie
        self.ng.sendto(cookie + b" " + bencode(message), (HOSTS.relay, self.ng_port))
        while True:
            data = self.ng.recv(65536)
            got, _, body = data.partition(b" ")
            if got == cookie:
                reply, _ = bdecode(body)
                assert isinstance(reply, dict)
                return reply

    def _port_of(self, reply: dict[str, Any], what: str) -> int:
        if reply.get("result") != b"ok":
            raise RuntimeError(f"rtpengine {what}: {reply}")
        found = re.search(rb"m=audio (\d+)", reply["sdp"])
        assert found, reply
        return int(found.group(1))

    def calls(
        self, n: int, a: tuple[str, int], b: tuple[str, int]
    ) -> list[tuple[tuple[str, int], tuple[str, int]]]:
        result = []
        for i in range(n):
            call = {"call-id": f"bench-{i}", "from-tag": "a"}
            # The offer's rewritten SDP goes to B: its port is where B sends; the answer's
            # goes to A.
            b_sends_to = self._port_of(
                self._ng({"command": "offer", **call, "sdp": _sdp(a[1])}), "offer"
            )
            a_sends_to = self._port_of(
                self._ng({"command": "answer", **call, "to-tag": "b", "sdp": _sdp(b[1])}),
                "answer",
            )
            result.append(((HOSTS.relay, a_sends_to), (HOSTS.relay, b_sends_to)))
        return result

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
        super().stop()
