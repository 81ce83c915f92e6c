"""Parsing and serialization against the RFC 4475 / RFC 5118 torture messages.

The vectors are byte-exact copies (tests/torture, see PROVENANCE.md) and
INDEX.tsv says what the RFCs expect of each. A message the RFC calls
well-formed must parse and survive serialize → parse unchanged; one it calls
malformed must raise ParseError (with 505 for a bad version).
"""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.sip.errors import ParseError
from switch.sip.framing import Ping, StreamFramer
from switch.sip.headers import Via
from switch.sip.message import (
    Request,
    Response,
    error_response,
    new_branch,
    new_tag,
    parse_message,
)
from switch.sip.uri import AbsoluteUri, SipUri

TORTURE = Path(__file__).parent.parent / "torture"
INDEX = list(csv.DictReader((TORTURE / "INDEX.tsv").open(), delimiter="\t"))

# Malformed per the RFC, but the RFC prefers that an element accept it.
LIBERAL = {"rfc4475/baddate.dat"}  # 3.1.2.12: "should not" reject unless Date matters


def load(name: str) -> bytes:
    return (TORTURE / name).read_bytes()


def fields(msg: Request | Response) -> list[tuple[str, str]]:
    return [
        (name.lower(), value)
        for name, value in msg.headers
        if name.lower() not in ("l", "content-length")
    ]


# "Application" tests whose fault is in the framing or the mandatory fields,
# which the parser owns; the others (unknown scheme, To not a SIP AOR, ...)
# are for the element acting on the request and are checked in tests/daemon.
APPLICATION_PARSE_ERRORS = {"rfc4475/insuf.dat", "rfc4475/multi01.dat", "rfc4475/mcl01.dat"}


def expects_parse_error(row: dict[str, str]) -> bool:
    if row["kind"] == "invalid":
        return row["file"] not in LIBERAL
    return row["file"] in APPLICATION_PARSE_ERRORS


@pytest.mark.parametrize("name", [r["file"] for r in INDEX if not expects_parse_error(r)])
def test_well_formed_message_parses_and_round_trips(name: str) -> None:
    msg = parse_message(load(name))
    again = parse_message(bytes(msg))
    assert type(again) is type(msg)
    assert fields(again) == fields(msg)
    assert again.body == msg.body
    if isinstance(msg, Request):
        assert isinstance(again, Request)
        assert (again.method, again.uri) == (msg.method, msg.uri)


@pytest.mark.parametrize("name", [r["file"] for r in INDEX if expects_parse_error(r)])
def test_malformed_message_raises_parse_error(name: str) -> None:
    row = next(r for r in INDEX if r["file"] == name)
    with pytest.raises(ParseError) as info:
        parse_message(load(name))
    preferred = row["accept"].split(";")[0]
    expected = 505 if preferred == "505" else 400
    assert info.value.status == expected


def test_wsinv_whitespace_and_folding() -> None:
    msg = parse_message(load("rfc4475/wsinv.dat"))
    assert isinstance(msg, Request)
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    assert [v.transport for v in msg.via] == ["UDP", "TCP", "UDP"]
    assert [v.branch for v in msg.via] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    (contact,) = msg.contacts
    assert contact.q == 0.33
    assert contact.address is not None and contact.address.display == 'Quoted string ""'
    assert len(msg.body) == 150


def test_compact_forms_and_escapes() -> None:
    msg = parse_message(load("rfc4475/esc01.dat"))
    assert msg.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert msg.headers.get("Content-Type") == "application/sdp"
    assert isinstance(msg.to.uri, SipUri) and msg.to.uri.user_unescaped == "user"
    (contact,) = msg.contacts
    assert contact.address is not None and isinstance(contact.address.uri, SipUri)
    assert contact.address.uri.user_unescaped == "caller"


def test_escaped_null_keeps_two_distinct_contacts() -> None:
    msg = parse_message(load("rfc4475/escnull.dat"))
    users = [
        c.address.uri.user for c in msg.contacts if c.address and isinstance(c.address.uri, SipUri)
    ]
    assert users == ["%00", "%00%00"]
    assert isinstance(msg.to.uri, SipUri) and msg.to.uri.user_unescaped == "null-\x00-null"


def test_semicolon_in_user_part() -> None:
    msg = parse_message(load("rfc4475/semiuri.dat"))
    assert isinstance(msg, Request)
    uri = msg.request_uri
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.host, uri.params) == ("user;par=u%40example.net", "example.com", ())
    assert len(msg.headers.get_all("Accept")) == 6


def test_unknown_method_and_escaped_method_are_not_register() -> None:
    msg = parse_message(load("rfc4475/esc02.dat"))
    assert isinstance(msg, Request) and msg.method == "RE%47IST%45R"
    assert msg.headers.get_all("Contact") == [
        "<sip:alias1@host1.example.com>",
        "<sip:alias3@host3.example.com>",
    ]


def test_double_request_datagram_ignores_trailing_octets() -> None:
    msg = parse_message(load("rfc4475/dblreq.dat"))
    assert isinstance(msg, Request) and msg.method == "REGISTER" and msg.body == b""


def test_no_content_length_takes_rest_of_datagram() -> None:
    msg = parse_message(load("rfc4475/inv2543.dat"))
    assert msg.body.startswith(b"v=0") and msg.top_via.branch is None and not msg.top_via.is_rfc3261


def test_multipart_binary_body_framed_by_content_length() -> None:
    data = load("rfc4475/mpart01.dat")
    msg = parse_message(data)
    assert b"\x00" not in data or len(msg.body) == int(msg.headers.get("Content-Length") or 0)


def test_unknown_uri_scheme_parses_to_absolute_uri() -> None:
    msg = parse_message(load("rfc4475/unkscm.dat"))
    assert isinstance(msg, Request) and isinstance(msg.request_uri, AbsoluteUri)


@pytest.mark.parametrize(
    ("name", "host", "port"),
    [
        ("rfc5118-crlf/ipv6-good", "[2001:db8::10]", None),
        ("rfc5118-crlf/port-ambiguous", "[2001:db8::10:5070]", None),
        ("rfc5118-crlf/port-unambiguous", "[2001:db8::10]", 5070),
        ("rfc5118-crlf/ipv6-bug-abnf-3-colons", "[2001:db8:::192.0.2.1]", None),
    ],
)
def test_ipv6_references(name: str, host: str, port: int | None) -> None:
    msg = parse_message(load(name))
    assert isinstance(msg, Request)
    uri = msg.request_uri
    assert isinstance(uri, SipUri) and (uri.host, uri.port) == (host, port)


def test_via_received_ipv6_with_and_without_brackets() -> None:
    with_ = parse_message(load("rfc5118-crlf/via-received-param-with-delim")).top_via
    without = parse_message(load("rfc5118-crlf/via-received-param-no-delim")).top_via
    assert with_.received == "[2001:db8::9:255]"
    assert without.received == "2001:db8::9:255"


def test_response_copies_dialog_fields_and_adds_to_tag() -> None:
    request = parse_message(load("rfc4475/cparam01.dat"))
    assert isinstance(request, Request)
    response = request.response(401, to_tag="abc")
    again = parse_message(bytes(response))
    assert isinstance(again, Response)
    assert (again.status, again.reason) == (401, "Unauthorized")
    assert again.to.tag == "abc"
    assert again.call_id == request.call_id and again.cseq == request.cseq
    assert bytes(again).endswith(b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    "to",
    [
        "sip:bob@example.com",  # no angle brackets: what follows is a header parameter
        '"Bob ;<x>" <sip:bob@example.com;transport=udp>;x-foo=1',
        "Bob <sip:bob@example.com?subject=hi>",
    ],
)
def test_the_to_tag_is_added_to_the_to_as_written(to: str) -> None:
    request = parse_message(
        b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: " + to.encode() + b"\r\nCall-ID: c\r\n"
        b"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(request, Request)
    again = parse_message(bytes(request.response(180, to_tag="t-9")))
    assert again.headers.get("To") == f"{to};tag=t-9"
    assert again.to.tag == "t-9" and again.to.uri == request.to.uri
    assert again.to.display == request.to.display


def test_a_pushed_via_is_what_parsing_the_message_again_gives() -> None:
    request = parse_message(load("rfc4475/cparam01.dat"))
    assert isinstance(request, Request)
    below = request.via
    ours = Via("UDP", "192.0.2.7", 5060, (("branch", "z9hG4bK-ours"), ("rport", None)))
    request.push_via(ours)
    assert request.via == [ours, *below]
    again = parse_message(bytes(request))
    assert again.via == request.via
    assert again.headers.get_all("Via")[0] == "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-ours;rport"


def test_error_response_to_unparseable_request() -> None:
    response = error_response(load("rfc4475/badinv01.dat"), 400, "Bad Via")
    assert response is not None and response.status == 400
    assert response.headers.get("Call-ID") == "badinv01.0ha0isndaksdjasdf3234nas"
    assert response.headers.get(
        "To",
    ).startswith("sip:j.user@example.com;tag=")  # type: ignore[union-attr]


def test_error_response_impossible_without_via_or_for_responses() -> None:
    assert error_response(b"garbage\r\n\r\n", 400, "x") is None
    assert error_response(load("rfc4475/bigcode.dat"), 400, "x") is None


def test_headers_edit_invalidates_typed_cache() -> None:
    msg = parse_message(load("rfc4475/cparam01.dat"))
    assert msg.cseq.number == 2
    msg.headers.set("CSeq", "3 REGISTER")
    assert msg.cseq.number == 3


def test_stream_framer_cuts_messages_and_answers_pings() -> None:
    one = bytes(parse_message(load("rfc4475/esc01.dat")))
    two = bytes(parse_message(load("rfc4475/cparam01.dat")))
    framer = StreamFramer()
    stream = b"\r\n\r\n" + one + two
    out: list[bytes | Ping] = []
    for i in range(0, len(stream), 7):  # arbitrary segmentation
        framer.feed(stream[i : i + 7])
        while (item := framer.next()) is not None:
            out.append(item)
    assert out == [Ping(), one, two]


def test_stream_framer_requires_content_length() -> None:
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n")
    with pytest.raises(ParseError):
        framer.next()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_message(data)


_SAMPLES = [load(r["file"]) for r in INDEX]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(_SAMPLES), st.data())
def test_mutated_torture_messages_raise_only_parse_error(
    sample: bytes, data: st.DataObject
) -> None:
    buf = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        action = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip" and buf:
            buf[pos] = data.draw(st.sampled_from(b'\x00\r\n ;:,<>"@[]%\\=\xff0'))
        elif action == "delete" and buf:
            del buf[pos]
        elif action == "insert":
            buf[pos:pos] = data.draw(
                st.sampled_from([b"\r\n", b";", b",", b'"', b"<", b" ", b"::"])
            )
        elif action == "truncate":
            del buf[pos:]
    try:
        msg = parse_message(bytes(buf))
    except ParseError:
        return
    parse_message(bytes(msg))  # what we accept, we can also re-read


def test_route_and_record_route_views() -> None:
    wsinv = parse_message(load("rfc4475/wsinv.dat"))
    (route,) = wsinv.routes
    assert isinstance(route.uri, SipUri) and route.uri.param("lr") == ""
    assert route.uri.param("unknownwith") == "value"
    inv = parse_message(load("rfc4475/inv2543.dat"))
    (rr,) = inv.record_routes
    assert isinstance(rr.uri, SipUri) and rr.uri.param("maddr") == "ss1.example.com"


def test_tags_and_branches_are_random_hex_and_never_repeat_across_refills() -> None:
    # 20 000 identifiers of 6 and 8 octets draw the 4 KiB pool dozens of times over.
    tags = [new_tag() for _ in range(10_000)]
    branches = [new_branch() for _ in range(10_000)]
    assert all(len(t) == 12 and int(t, 16) >= 0 for t in tags)
    assert all(b.startswith("z9hG4bK") and len(b) == 7 + 16 for b in branches)
    assert len(set(tags)) == len(tags) and len(set(branches)) == len(branches)


def test_a_forked_child_does_not_repeat_its_parents_identifiers() -> None:
    new_tag()  # the pool holds octets the child would otherwise hand out too
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next tags and leave at once
        os.write(write, " ".join(new_tag() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    parent = [new_tag() for _ in range(4)]
    assert len(child) == 4 and not set(child) & set(parent)
