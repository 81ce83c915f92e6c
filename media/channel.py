"""The control channel between the switch and a media worker process.

One `socketpair(AF_UNIX, SOCK_SEQPACKET)`: the kernel keeps message boundaries and order, and
carries file descriptors with a message (SCM_RIGHTS), so the switch can bind a leg's ports
itself and hand the sockets over. A message is a pickled tuple ``(op, *args)``: both ends are
this package's code in processes the switch started, on a channel nobody else can reach, so
pickle's trust model holds, and frozen dataclasses (`SessionStats`, `MediaTimeout`) cross
as they are.

Messages sent in one turn of the event loop leave together, as one datagram ``("batch",
[(pickled message, how many of the descriptors are its)])``: a call's set-up is several
orders, and this makes them one system call and one wake-up of the far end. Sending never
blocks the event loop: a datagram the kernel cannot take now waits in a queue (with its
descriptors) until the socket is writable again, and order is kept. The far end closing (or
dying) is one `on_close` call.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog

__all__ = ["MAX_FDS", "Channel", "Message", "pair"]

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

Message = tuple[Any, ...]
MAX_FDS: Final = 253  # descriptors one datagram may carry (SCM_MAX_FD; a session: 4)
_MAX_MESSAGE: Final = 1 << 20
_BATCH: Final = 64  # messages per datagram at most
_BATCH_BYTES: Final = 256 << 10
_BUFFER: Final = 4 << 20  # socket buffers: a second of counters for thousands of sessions


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of channel sockets (one for each process)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (a, b):
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, _BUFFER)
    return a, b


class Channel:
    """Whole messages with descriptors, both ways, on the running event loop."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[Message, list[socket.socket]], None],
        on_close: Callable[[], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = loop or asyncio.get_running_loop()
        self._on_message = on_message
        self._on_close = on_close
        self._queue: deque[tuple[bytes, Sequence[socket.socket]]] = deque()
        self._pending: list[tuple[bytes, Sequence[socket.socket]]] = []  # this turn's, pickled
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._readable)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, message: Message, socks: Sequence[socket.socket] = ()) -> None:
        """Send `message` (and duplicates of `socks` for the far end) at the end of this turn
        of the loop, in order."""
        if self._closed:
            return
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > _MAX_MESSAGE:
            raise ValueError(f"control message {message[0]!r} of {len(data)} bytes is too big")
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append((data, socks))

    def _flush(self) -> None:
        """This turn's messages, as few datagrams as the limits allow."""
        pending, self._pending = self._pending, []
        batch: list[tuple[bytes, Sequence[socket.socket]]] = []
        size = fds = 0
        for data, socks in pending:
            full = len(batch) == _BATCH or size + len(data) > _BATCH_BYTES
            if batch and (full or fds + len(socks) > MAX_FDS):
                self._datagram(batch)
                batch, size, fds = [], 0, 0
            batch.append((data, socks))
            size += len(data)
            fds += len(socks)
        if batch:
            self._datagram(batch)

    def _datagram(self, batch: list[tuple[bytes, Sequence[socket.socket]]]) -> None:
        if self._closed:
            return
        if len(batch) == 1:
            data, socks = batch[0]
        else:
            parts = [(part, len(s)) for part, s in batch]
            data = pickle.dumps(("batch", parts), protocol=pickle.HIGHEST_PROTOCOL)
            socks = [sock for _, s in batch for sock in s]
        if self._queue:
            self._queue.append((data, socks))
            return
        if not self._write(data, socks):
            self._queue.append((data, socks))
            self._loop.add_writer(self._sock.fileno(), self._writable)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._queue:
            self._loop.remove_writer(self._sock.fileno())
            self._queue.clear()
        self._sock.close()

    def _write(self, data: bytes, socks: Sequence[socket.socket]) -> bool:
        """Send one message; False if the socket is full now."""
        try:
            socket.send_fds(self._sock, [data], [s.fileno() for s in socks])
        except BlockingIOError:
            return False
        except OSError as e:
            _log.warning("media control channel broken", error=str(e))
            self._lost()
        return True

    def _writable(self) -> None:
        queue = self._queue
        while queue:
            data, socks = queue[0]
            if not self._write(data, socks):
                return
            if self._closed:
                return
            queue.popleft()
        self._loop.remove_writer(self._sock.fileno())

    def _readable(self) -> None:
        while not self._closed:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, _MAX_MESSAGE, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                _log.warning("media control channel broken", error=str(e))
                self._lost()
                return
            socks = [socket.socket(fileno=fd) for fd in fds]
            if not data:
                for sock in socks:
                    sock.close()
                self._lost()
                return
            message = pickle.loads(data)
            if message[0] != "batch":
                self._on_message(message, socks)
                continue
            for part, count in message[1]:
                if self._closed:
                    break
                self._on_message(pickle.loads(part), socks[:count])
                socks = socks[count:]

    def _lost(self) -> None:
        if not self._closed:
            self.close()
            self._on_close()
