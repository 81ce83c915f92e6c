"""Batched UDP for the media relay bench: `sendmmsg`/`recvmmsg` through ctypes, with every
message header, address and buffer laid out once in NumPy arrays.

Python touches a batch, never a packet: one ctypes call sends or receives up to 1024
datagrams, and the fields the bench reads (send time, call, leg, kernel receive time) are
NumPy columns of the receive buffers. This is what lets one generator process out-run the
relays it measures. Linux x86-64/aarch64 only (LP64 struct layouts).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys

import numpy as np

if sys.platform != "linux" or struct.calcsize("P") != 8:
    raise SystemExit("the media relay bench needs 64-bit Linux (sendmmsg/recvmmsg)")

MSG_DONTWAIT = 0x40
SO_TIMESTAMPNS = 35  # also the cmsg type (SCM_TIMESTAMPNS)
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
MAX_BATCH = 1024  # UIO_MAXIOV: the kernel's limit on messages per call

# struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; } on LP64.
MMSGHDR = np.dtype(
    [
        ("name", "<u8"),
        ("namelen", "<u4"),
        ("_pad0", "<u4"),
        ("iov", "<u8"),
        ("iovlen", "<u8"),
        ("control", "<u8"),
        ("controllen", "<u8"),
        ("flags", "<i4"),
        ("_pad1", "<u4"),
        ("len", "<u4"),
        ("_pad2", "<u4"),
    ]
)
IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])
SOCKADDR_IN = np.dtype([("family", "<u2"), ("port", ">u2"), ("addr", ">u4"), ("_zero", "<u8")])
# One cmsghdr carrying a struct timespec (SO_TIMESTAMPNS), padded to a round 64 bytes.
CMSG_TS = np.dtype(
    [
        ("len", "<u8"),
        ("level", "<i4"),
        ("type", "<i4"),
        ("sec", "<i8"),
        ("nsec", "<i8"),
        ("_pad", "V32"),
    ]
)
# The bench's RTP packet: a 12-byte RTP header, then in the payload what the bench needs to
# account for it (send time, call, leg), padded to 172 bytes (12 + 160: 20 ms of G.711).
PACKET_SIZE = 172
RTP_HEADER = [("vpxcc", "u1"), ("mpt", "u1"), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4")]
PACKET = np.dtype(
    [
        *RTP_HEADER,
        ("tx", "<i8"),  # CLOCK_REALTIME ns when the generator sent it
        ("call", "<u4"),
        ("leg", "u1"),
        ("_pad", f"V{PACKET_SIZE - 25}"),
    ]
)
assert MMSGHDR.itemsize == 64 and CMSG_TS.itemsize == 64 and PACKET.itemsize == PACKET_SIZE
RECV_SLOT = 256  # receive buffer per message: bigger than a packet, so truncation shows
RECV_PACKET = np.dtype({"names": ["packet"], "formats": [PACKET], "itemsize": RECV_SLOT})

_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int


def udp_socket(host: str = "127.0.0.1", port: int = 0, *, buffers: int = 64 << 20) -> socket.socket:
    """A non-blocking UDP socket with big kernel buffers (forced past rmem_max when root)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, buffers)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, buffers)
    sock.setblocking(False)
    sock.bind((host, port))
    return sock


def _sockaddrs(dests: list[tuple[str, int]]) -> np.ndarray:
    addrs = np.zeros(len(dests), SOCKADDR_IN)
    addrs["family"] = socket.AF_INET
    addrs["port"] = [port for _, port in dests]
    addrs["addr"] = [struct.unpack("!I", socket.inet_aton(host))[0] for host, _ in dests]
    return addrs


class Sender:
    """Message i sends row i of `packets` to `dests[i]`; `send(lo, hi)` sends rows lo..hi-1."""

    def __init__(self, sock: socket.socket, packets: np.ndarray, dests: list[tuple[str, int]]):
        n = len(packets)
        assert packets.flags.c_contiguous and len(dests) == n
        self.fd = sock.fileno()
        self.packets = packets
        self.addrs = _sockaddrs(dests)
        self.iov = np.zeros(n, IOVEC)
        self.iov["base"] = packets.ctypes.data + np.arange(n, dtype=np.uint64) * packets.itemsize
        self.iov["len"] = packets.itemsize
        self.msgs = np.zeros(n, MMSGHDR)
        self.msgs["name"] = self.addrs.ctypes.data + np.arange(n, dtype=np.uint64) * 16
        self.msgs["namelen"] = 16
        self.msgs["iov"] = self.iov.ctypes.data + np.arange(n, dtype=np.uint64) * 16
        self.msgs["iovlen"] = 1
        self._base = self.msgs.ctypes.data
        self.failed = 0  # datagrams the kernel refused (counted as sent-and-lost)

    def send(self, lo: int, hi: int) -> None:
        while lo < hi:
            count = min(hi - lo, MAX_BATCH)
            done = _sendmmsg(self.fd, self._base + lo * 64, count, 0)
            if done < 0:
                err = ctypes.get_errno()
                if err in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
                    self.failed += 1
                    lo += 1  # skip the datagram that failed, keep the rest of the batch
                    continue
                raise OSError(err, f"sendmmsg: {errno.errorcode.get(err, err)}")
            lo += done


class Receiver:
    """`recv()` fills up to `batch` slots; `packets[:n]`, `lengths[:n]`, `rx_ns()` read them."""

    def __init__(self, sock: socket.socket, *, batch: int = MAX_BATCH, timestamps: bool = True):
        self.fd = sock.fileno()
        self.batch = batch
        self.slots = np.zeros(batch, RECV_PACKET)
        self.packets = self.slots["packet"]
        self.iov = np.zeros(batch, IOVEC)
        self.iov["base"] = self.slots.ctypes.data + np.arange(batch, dtype=np.uint64) * RECV_SLOT
        self.iov["len"] = RECV_SLOT
        self.addrs = np.zeros(batch, SOCKADDR_IN)
        self.msgs = np.zeros(batch, MMSGHDR)
        self.msgs["name"] = self.addrs.ctypes.data + np.arange(batch, dtype=np.uint64) * 16
        self.msgs["namelen"] = 16
        self.msgs["iov"] = self.iov.ctypes.data + np.arange(batch, dtype=np.uint64) * 16
        self.msgs["iovlen"] = 1
        self.timestamps = timestamps
        self.cmsgs = np.zeros(batch, CMSG_TS)
        if timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.msgs["control"] = self.cmsgs.ctypes.data + np.arange(batch, dtype=np.uint64) * 64
            self.msgs["controllen"] = 64
        self.lengths = self.msgs["len"]
        self._base = self.msgs.ctypes.data

    def recv(self) -> int:
        """Datagrams now queued, up to `batch`, without waiting; 0 when there are none."""
        n = _recvmmsg(self.fd, self._base, self.batch, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, f"recvmmsg: {errno.errorcode.get(err, err)}")
        if self.timestamps and n:
            self.msgs["controllen"][:n] = 64  # the kernel shrank them to what it wrote
        self.msgs["namelen"][:n] = 16
        return n

    def rx_ns(self, n: int) -> np.ndarray:
        """Kernel receive times (CLOCK_REALTIME ns) of the last `n` datagrams received."""
        c = self.cmsgs[:n]
        if n and (c["level"][0] != socket.SOL_SOCKET or c["type"][0] != SO_TIMESTAMPNS):
            raise RuntimeError("no SO_TIMESTAMPNS control message on a received datagram")
        return c["sec"] * 1_000_000_000 + c["nsec"]

    def echo(self, n: int) -> None:
        """Send the last `n` datagrams back to their senders, as received (one syscall)."""
        self.iov["len"][:n] = self.lengths[:n]
        lo = 0
        while lo < n:
            done = _sendmmsg(self.fd, self._base + lo * 64, n - lo, 0)
            if done < 0:
                lo += 1  # the kernel refused one; it is lost, as a relay would lose it
                continue
            lo += done
        self.iov["len"][:n] = RECV_SLOT
