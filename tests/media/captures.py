"""The RTP captures that sipp ships (package sip-tester, installed by scripts/test), read.

sipp plays them into calls: ``dtmf_2833_*.pcap`` are one RFC 4733 key press each,
``g711a.pcap`` is 7 s of recorded audio in A-law.
"""

from __future__ import annotations

import struct
from pathlib import Path

CAPTURES = Path("/usr/share/sip-tester")


def rtp_payloads(pcap: Path) -> list[tuple[int, bytes]]:
    """(RTP timestamp, payload) of each packet of a classic pcap of Ethernet/IPv4/UDP/RTP."""
    data = pcap.read_bytes()
    magic, _, _, _, _, _, link = struct.unpack_from("<IHHiIII", data)
    assert (magic, link) == (0xA1B2C3D4, 1), "little-endian pcap of Ethernet frames expected"
    packets, offset = [], 24
    while offset < len(data):
        length = struct.unpack_from("<8xI", data, offset)[0]
        frame = data[offset + 16 : offset + 16 + length]
        offset += 16 + length
        ip = frame[14:]
        assert frame[12:14] == b"\x08\x00" and ip[9] == 17, "IPv4/UDP expected"
        rtp = ip[(ip[0] & 0x0F) * 4 + 8 :]
        packets.append((struct.unpack_from("!I", rtp, 4)[0], rtp[12:]))
    return packets
