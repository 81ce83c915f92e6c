"""The processes `bench/media_relay.py` measures besides rtpengine (not run by hand).

    media_relay_server.py relay [--port-min P --port-max P]   softswitch's media.Relay
    media_relay_server.py echo                                 the generator's reflector
    media_relay_server.py floor [--port-min P --port-max P]    the least a Python relay does

relay: the daemon's setting (one asyncio loop, uvloop when installed, `media.Relay` with
latching and counters on) driven by JSON lines on stdin, one answer line each on stdout:

    {"op": "calls", "n": N, "a": [host, port], "b": [host, port]}
        -> {"ports": [[a_rtp, b_rtp], ...]}   allocate N sessions; both SDP remotes set
    {"op": "totals"} -> the relay's RelayTotals as an object
    end of input -> exit

echo: two sockets that send every datagram back to its sender in recvmmsg/sendmmsg batches:
no Python per packet, so generator -> echo -> generator shows what the generator and the
kernel manage without a relay. Prints {"ports": [a, b]} and runs until stdin closes.

floor: the same "calls" protocol as relay, but each leg's port is one socket connected to the
phone and every packet is `recv_into` a shared buffer and `send` on the other leg's socket
from a bare epoll loop: no latching, no counters, no asyncio. It is the ceiling of any relay
that makes one receive and one send system call per packet from Python on this machine (the
design of `media.forward`), so the bench shows how far the real relay is from it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import resource
import select
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root


def _raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _reply(value: object) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def run_echo(host: str) -> None:
    from media_relay_mmsg import Receiver, udp_socket

    socks = [udp_socket(host), udp_socket(host)]
    receivers = {s.fileno(): Receiver(s, timestamps=False) for s in socks}
    poll = select.epoll()
    for s in socks:
        poll.register(s.fileno(), select.EPOLLIN)
    poll.register(sys.stdin.fileno(), select.EPOLLIN)
    _reply({"ports": [s.getsockname()[1] for s in socks]})
    while True:
        for fd, _ in poll.poll():
            if fd == sys.stdin.fileno():
                if not os.read(fd, 4096):
                    return
                continue
            receiver = receivers[fd]
            while (n := receiver.recv()) > 0:
                receiver.echo(n)
                if n < receiver.batch:
                    break


def _bind_from(host: str, port: int) -> tuple[socket.socket, int]:
    """A UDP socket on `host` at the first free even port from `port`, and the next one."""
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            port += 2
            continue
        sock.setblocking(False)
        return sock, port + 2


def run_floor(args: argparse.Namespace) -> None:
    buf = bytearray(65536)
    view = memoryview(buf)
    poll = select.epoll()
    stdin = sys.stdin.fileno()
    poll.register(stdin, select.EPOLLIN)
    # fd -> (receive on this leg's socket, send on the other leg's)
    route: dict[int, tuple[Callable[[bytearray], int], Callable[[memoryview], int]]] = {}
    keep: list[socket.socket] = []
    next_port = args.port_min
    pending = b""
    _reply({"ready": True, "loop": "epoll"})
    while True:
        for fd, _ in poll.poll(-1, 256):
            if fd != stdin:
                rx, tx = route[fd]
                try:
                    n = rx(buf)
                    tx(view[:n])
                except OSError:
                    pass
                continue
            chunk = os.read(stdin, 65536)
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                if request["op"] != "calls":
                    _reply({})
                    continue
                ports = []
                for _ in range(request["n"]):
                    a, next_port = _bind_from(args.host, next_port)
                    b, next_port = _bind_from(args.host, next_port)
                    a.connect(tuple(request["a"]))
                    b.connect(tuple(request["b"]))
                    route[a.fileno()] = (a.recv_into, b.send)
                    route[b.fileno()] = (b.recv_into, a.send)
                    for sock in (a, b):
                        keep.append(sock)
                        poll.register(sock.fileno(), select.EPOLLIN)
                    ports.append([a.getsockname()[1], b.getsockname()[1]])
                _reply({"ports": ports})


async def run_relay(args: argparse.Namespace) -> None:
    import structlog

    from media import Relay, RelayConfig, RelayLike, Side
    from media.workers import RelayPool

    # Warnings only, and never on stdout: that is the control channel.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    loop = asyncio.get_running_loop()
    config = RelayConfig(
        address=args.host, port_min=args.port_min, port_max=args.port_max, kernel=args.kernel
    )
    relay: RelayLike
    if args.workers:
        pool = RelayPool(config, args.workers)
        await pool.started()
        relay = pool
    else:
        relay = Relay(config)

    def on_request(request: dict[str, Any]) -> None:
        if request["op"] == "calls":
            ports = []
            for i in range(request["n"]):
                session = relay.allocate(f"bench-{i}")
                session.set_remote(Side.A, *request["a"])
                session.set_remote(Side.B, *request["b"])
                ports.append([session.local(Side.A).rtp_port, session.local(Side.B).rtp_port])
            _reply({"ports": ports})
        elif request["op"] == "totals":
            if isinstance(relay, RelayPool):
                await_totals = asyncio.ensure_future(relay.refresh())
                await_totals.add_done_callback(lambda _: _reply(dataclasses.asdict(relay.totals())))
                return
            _reply(dataclasses.asdict(relay.totals()))

    if os.environ.get("NOGC"):
        import gc

        gc.disable()
    done = read_requests(loop, on_request)
    kernel = relay.kernel is not None if isinstance(relay, Relay) else config.kernel != "off"
    _reply({"ready": True, "loop": type(loop).__module__, "kernel": kernel})
    await done
    relay.close()
    if isinstance(relay, RelayPool):
        await relay.wait_closed()


def read_requests(
    loop: asyncio.AbstractEventLoop, on_request: Callable[[dict[str, Any]], None]
) -> asyncio.Future[None]:
    """Call ``on_request`` with each JSON line read from stdin; the future ends with it."""
    done: asyncio.Future[None] = loop.create_future()
    pending = b""

    def on_stdin() -> None:
        nonlocal pending
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            loop.remove_reader(sys.stdin.fileno())
            done.set_result(None)
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            on_request(json.loads(line))

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    return done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["relay", "echo", "floor"])
    parser.add_argument("--host", default="127.0.0.1", help="the address to relay on")
    parser.add_argument("--port-min", type=int, default=20000)
    parser.add_argument("--port-max", type=int, default=59999)
    parser.add_argument("--workers", type=int, default=0, help="relay in N media workers")
    parser.add_argument(
        "--kernel", choices=["auto", "on", "off"], default="off", help="media.kernel forwarding"
    )
    args = parser.parse_args()
    _raise_fd_limit()
    if args.mode == "echo":
        run_echo(args.host)
        return
    if args.mode == "floor":
        run_floor(args)
        return
    try:
        import uvloop
    except ImportError:
        asyncio.run(run_relay(args))
    else:
        uvloop.run(run_relay(args))


if __name__ == "__main__":
    main()
