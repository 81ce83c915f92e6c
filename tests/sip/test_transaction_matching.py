"""RFC 3261 §17.1.3/§17.2.3 transaction matching: RFC 3261 branch keys, the RFC 2543
fallback for old phones, and CANCEL finding its INVITE. The flows of each transaction kind
are in test_transaction.py, whose message builders these tests share.
"""

from __future__ import annotations

from switch.sip.message import Request, parse_message
from switch.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    TransactionTable,
    ack_for_non_2xx,
    client_key,
    invite_key_for_cancel,
    server_key,
)
from tests.sip.test_transaction import (
    BUSY_ACK,
    BYE,
    CREATED,
    INVITE,
    Send,
    ack_for_2xx,
    answer,
    cancel_for,
    describe,
    parse_message_file,
    request,
    run,
    uac_invite,
)

# -- matching (§17.1.3, §17.2.3) -------------------------------------------------


def replace_header(req: Request, name: str, value: str) -> Request:
    copy = parse_message(bytes(req))
    assert isinstance(copy, Request)
    copy.headers.set(name, value)
    return copy


def test_rfc3261_keys_branch_sent_by_method() -> None:
    invite = request(INVITE)
    ack = request(BUSY_ACK)
    cancel = cancel_for(invite)
    assert server_key(request(INVITE)) == server_key(invite)  # a retransmission
    assert server_key(ack) == server_key(invite)  # ACK for a non-2xx: the INVITE's
    assert server_key(ack_for_2xx(invite)) != server_key(invite)  # ACK for 2xx: its own
    assert server_key(cancel) != server_key(invite)  # CANCEL: its own transaction ...
    assert invite_key_for_cancel(cancel) == server_key(invite)  # ... naming the INVITE
    via = invite.headers.get_all("Via")
    other_host = replace_header(invite, "Via", via[0].replace("ss1.", "ss9."))
    assert server_key(other_host) != server_key(invite)  # sent-by differs
    shouted = replace_header(invite, "Via", via[0].replace("bK2d4790", "bK2D4790"))
    assert server_key(shouted) == server_key(invite)  # branch compares case-insensitively


def test_client_key_is_branch_and_cseq_method() -> None:
    invite = uac_invite()
    cancel = cancel_for(invite)
    table = TransactionTable()
    inv_txn = table.add(ClientInviteTransaction(invite))
    cancel_txn = table.add(ClientNonInviteTransaction(cancel))
    assert client_key(answer(invite, 487)) == inv_txn.key
    assert table.match_response(answer(invite, 487)) is inv_txn
    assert table.match_response(answer(cancel, 200)) is cancel_txn
    assert table.match_response(answer(request(BYE), 200)) is None
    table.remove(inv_txn)
    assert table.match_response(answer(invite, 487)) is None
    assert list(table) == [cancel_txn]


def test_rfc2543_invite_and_its_ack_match_by_call_fields() -> None:
    invite = parse_message_file("inv2543.dat")  # no branch at all
    table = TransactionTable()
    txn = table.add(ServerInviteTransaction(invite, 0.0))
    assert table.match_request(parse_message_file("inv2543.dat")) is txn
    busy = answer(invite, 486, tag="as7d9")
    ack = ack_for_non_2xx(invite, busy)  # as a 2543 client sends it: the INVITE's Via
    stray = ack_for_non_2xx(invite, answer(invite, 486, tag="other"))
    assert server_key(ack) == server_key(invite)
    assert table.match_request(ack) is None  # §17.2.3: no response with that To tag yet
    run(
        txn,
        [
            (0.0, CREATED, [], ["RequestReceived INVITE"], State.PROCEEDING),
            (0.1, Send(busy), ["486"], [], State.COMPLETED),
        ],
    )
    assert table.match_request(ack) is txn
    assert table.match_request(stray) is None  # another To tag: not this transaction
    run(
        txn,
        [
            (0.2, stray, [], [], State.COMPLETED),  # ignored if handed over anyway
            (0.3, ack, [], [], State.CONFIRMED),
        ],
    )


def test_rfc2543_ack_for_2xx_reaches_the_tu_through_the_accepted_state() -> None:
    invite = parse_message_file("inv2543.dat")
    table = TransactionTable()
    txn = table.add(ServerInviteTransaction(invite, 0.0))
    ok = answer(invite, 200, tag="as7d9")
    txn.send_response(ok, 0.1)
    ack = ack_for_non_2xx(invite, ok)  # a 2543 ACK for 2xx reuses the INVITE's Via
    assert table.match_request(ack) is txn
    txn.receive(ack, 0.2)
    assert [describe(e) for e in txn.events()] == ["RequestReceived INVITE", "AckReceived"]


def test_rfc2543_keys_differ_by_call_id_cseq_from_tag_and_via() -> None:
    invite = parse_message_file("inv2543.dat")
    key = server_key(invite)
    assert server_key(replace_header(invite, "Call-ID", "other@example.com")) != key
    assert server_key(replace_header(invite, "CSeq", "57 INVITE")) != key
    assert server_key(replace_header(invite, "Via", "SIP/2.0/UDP other.example.com")) != key
    assert server_key(replace_header(invite, "From", "<sip:x@example.net>;tag=1")) != key


def test_bare_magic_cookie_branch_falls_back_to_rfc2543() -> None:
    # RFC 4475 §3.1.2.4: branch=z9hG4bK names no transaction; two requests
    # carrying it must not be taken for retransmissions of one another
    options = parse_message_file("badbranch.dat")
    other = replace_header(options, "Call-ID", "another.call@example.org")
    assert server_key(options) != server_key(other)
    assert server_key(parse_message_file("badbranch.dat")) == server_key(options)
    txn = ServerNonInviteTransaction(options, 0.0)
    assert txn.key == server_key(options)


def test_cancel_finds_the_invite_and_the_ack_for_487_confirms_it() -> None:
    invite = request(INVITE)
    cancel = cancel_for(invite)
    table = TransactionTable()
    inv_txn = table.add(ServerInviteTransaction(invite, 0.0))
    assert table.match_request(cancel) is None  # a new request: its own transaction
    cancel_txn = table.add(ServerNonInviteTransaction(cancel, 0.5))
    assert table.invite_for_cancel(cancel) is inv_txn
    assert table.match_request(cancel) is cancel_txn
    cancel_txn.send_response(answer(cancel, 200), 0.5)
    inv_txn.send_response(answer(invite, 487), 0.5)
    ack = request(BUSY_ACK)
    assert table.match_request(ack) is inv_txn
    inv_txn.receive(ack, 0.6)
    assert (inv_txn.state, cancel_txn.state) == (State.CONFIRMED, State.COMPLETED)
    assert len(table) == 2


def test_cancel_for_an_unknown_invite_finds_nothing() -> None:
    table = TransactionTable()
    table.add(ServerNonInviteTransaction(request(BYE), 0.0))
    bye_as_cancel = request(BYE.replace("BYE sip", "CANCEL sip").replace("1 BYE", "1 CANCEL"))
    assert table.invite_for_cancel(bye_as_cancel) is None
