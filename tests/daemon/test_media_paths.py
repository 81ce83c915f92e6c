"""RTP through the relay between two sipps (rtp_stream), and latching of a NATed caller.

Both ends stream a raw PCMU file with sipp's `rtp_stream` from their media port on
127.0.0.1. The caller's SDP names another address, as a phone behind NAT does; the relay
must answer to where its packets come from (symmetric RTP latching, media.latch), or, with
`strict_source`, refuse them. The relay's per-leg counters in the call record say what it
carried and where it sent it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import Daemon, free_port, wait_until
from tests.daemon.sipp import SippResult
from tests.daemon.test_calls import call, call_legs, callee, ok, records, register_callee

NATED_SDP_ADDRESS = "192.168.77.10"  # what a phone behind a home router writes into SDP
TALK_PACKETS = 3 * 50  # the caller streams 3 s of 20 ms packets


# Every test here runs with the media in the daemon and in two media workers.
pytestmark = pytest.mark.both_media_ways


def mulaw(sample: float) -> int:
    """One G.711 µ-law byte of a sample in [-1, 1] (ITU-T G.711, continuous form)."""
    magnitude = math.log1p(255 * min(abs(sample), 1.0)) / math.log1p(255)
    code = min(int(magnitude * 128), 127)
    return (0x7F - code) | (0x80 if sample >= 0 else 0)


def write_tone(folder: Path, hz: float = 1000.0, seconds: float = 2.0) -> None:
    """tone.pcmu, the raw PCMU file the rtp_stream scenarios play, in sipp's folder."""
    samples = (0.5 * math.sin(2 * math.pi * hz * n / 8000) for n in range(int(8000 * seconds)))
    (folder / "tone.pcmu").write_bytes(bytes(mulaw(s) for s in samples))


def talk(daemon: Daemon, work: Path, sdp_ip: str) -> tuple[SippResult, SippResult, int]:
    """A call from a streaming caller whose SDP names `sdp_ip` to a streaming callee."""
    write_tone(work)
    port = register_callee(daemon, work)
    caller_media = free_port(both=True)
    with callee(daemon, work, "call_uas_rtp.xml", port, media_port=free_port(both=True)) as uas:
        caller = call(
            daemon,
            work,
            "call_uac_rtp.xml",
            media_port=caller_media,
            keys={"sdp_ip": sdp_ip},
        )
    return caller, uas[0], caller_media


def test_rtp_flows_both_ways_between_two_sipps(daemon: Daemon, work: Path) -> None:
    caller, uas, caller_media = talk(daemon, work, "127.0.0.1")
    assert ok(caller), caller
    assert ok(uas), uas
    (row,) = records(daemon)
    a, b = call_legs(daemon, row["call_id"])
    # The caller streamed for 3 s, the callee from its ACK to the BYE: both reached the relay,
    # and each one's packets were sent on to the other.
    assert TALK_PACKETS * 0.8 <= a["packets_in"] <= TALK_PACKETS * 1.2, a
    assert b["packets_in"] >= TALK_PACKETS * 0.8, b
    assert b["packets_out"] == a["packets_in"], (a, b)
    assert a["packets_out"] == b["packets_in"], (a, b)
    assert a["bytes_in"] == a["packets_in"] * 172  # 12-byte header + 160 samples
    assert a["lost"] == 0 and b["lost"] == 0
    assert a["codec"] == b["codec"] == "PCMU"
    assert a["latched"] == f"127.0.0.1:{caller_media}"
    daemon.wait_metric("softswitch_calls_total", 1, disposition="answered")
    # (with media workers, /metrics follows within a second: their totals come every second)
    relayed = a["packets_in"] + b["packets_in"]
    daemon.wait_metric("softswitch_rtp_packets_total", relayed, direction="in")


def test_latching_sends_to_a_nated_callers_real_source(daemon: Daemon, work: Path) -> None:
    caller, uas, caller_media = talk(daemon, work, NATED_SDP_ADDRESS)
    assert ok(caller), caller
    assert ok(uas), uas
    (row,) = records(daemon)
    a, b = call_legs(daemon, row["call_id"])
    # The SDP said 192.168.77.10; the relay learned 127.0.0.1 from the packets and sent the
    # callee's audio there: all of it but what came before the caller's first packet (that
    # went to the SDP address, or nowhere: this host has no route to it).
    assert a["latched"] == f"127.0.0.1:{caller_media}", a
    assert a["packets_in"] >= TALK_PACKETS * 0.8, a
    assert daemon.metric("softswitch_rtp_foreign_packets_total") == 0
    assert b["packets_in"] - 10 <= a["packets_out"] <= b["packets_in"], (a, b)
    assert b["packets_out"] == a["packets_in"], (a, b)


def test_strict_source_refuses_a_nated_caller(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    def strict(config: dict[str, Any]) -> None:
        config.setdefault("media", {})["strict_source"] = True

    daemon = make_daemon(strict)
    caller, uas, caller_media = talk(daemon, work, NATED_SDP_ADDRESS)
    assert ok(caller), caller  # signalling is unaffected
    assert ok(uas), uas
    (row,) = records(daemon)
    a, b = call_legs(daemon, row["call_id"])
    # Only the SDP address may send for leg A: every packet from 127.0.0.1 was dropped, and
    # the callee's audio went to the SDP address (nobody there), not to the real source.
    assert a["packets_in"] == 0, a
    wait_until(lambda: daemon.metric("softswitch_rtp_foreign_packets_total") >= TALK_PACKETS * 0.8,
               3, what="the foreign packets counted")  # fmt: skip
    assert a["latched"] == f"{NATED_SDP_ADDRESS}:{caller_media}", a
    assert b["packets_out"] == 0 and b["packets_in"] > 0, b
