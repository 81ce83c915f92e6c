"""Digest authentication: RFC vectors, client <-> NonceManager round trips, parsing."""

import base64
import hashlib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch.sip.digest import (
    AuthResult,
    Challenge,
    Credentials,
    NonceManager,
    compute_response,
    ha1,
    parse_challenge,
    parse_credentials,
    respond,
)
from switch.sip.errors import ParseError

# RFC 2617 §3.5, as printed (folded lines included).
RFC2617_CHALLENGE = """Digest
                 realm="testrealm@host.com",
                 qop="auth,auth-int",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41\""""
RFC2617_CREDENTIALS = """Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41\""""

# RFC 7616 §3.9.1, the SHA-256 challenge and its answer.
RFC7616_CHALLENGE = """Digest
       realm="http-auth@example.org",
       qop="auth, auth-int",
       algorithm=SHA-256,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""""
RFC7616_CREDENTIALS = """Digest username="Mufasa",
       realm="http-auth@example.org",
       uri="/dir/index.html",
       algorithm=SHA-256,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       nc=00000001,
       cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
       qop=auth,
       response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""""
RFC7616_RESPONSE = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"

REALM = "acme.example"
URI = "sip:acme.example"
T0 = 1_700_000_000.0


def test_rfc2617_md5_vector() -> None:
    creds = parse_credentials(RFC2617_CREDENTIALS)
    assert creds.username == "Mufasa"
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", "00000001", "0a4f113b")
    key = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert (
        compute_response(
            key, "GET", "/dir/index.html", creds.nonce, qop="auth", nc="00000001", cnonce="0a4f113b"
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def test_rfc2617_client_answers_like_the_rfc() -> None:
    challenge = parse_challenge(RFC2617_CHALLENGE)
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.algorithm is None
    creds = respond(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle Of Life",
        cnonce="0a4f113b",
    )
    assert creds == parse_credentials(RFC2617_CREDENTIALS)


def test_rfc7616_sha256_vector() -> None:
    challenge = parse_challenge(RFC7616_CHALLENGE)
    assert (challenge.algorithm, challenge.qop) == ("SHA-256", ("auth", "auth-int"))
    creds = parse_credentials(RFC7616_CREDENTIALS)
    key = ha1("Mufasa", "http-auth@example.org", "Circle of Life", "SHA-256")
    response = compute_response(
        key,
        "GET",
        "/dir/index.html",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        algorithm="SHA-256",
        qop="auth",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert response == creds.response == RFC7616_RESPONSE
    answer = respond(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        cnonce=creds.cnonce or "",
    )
    assert answer == creds


def test_rfc2069_response_without_qop() -> None:
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    key = ha1("bob", REALM, "pw")
    expected = md5(f"{key}:abc:{md5('INVITE:sip:200@acme.example')}")
    assert compute_response(key, "INVITE", "sip:200@acme.example", "abc") == expected


def _answer(
    challenge: Challenge,
    *,
    password: str = "s3cret",
    nc: int = 1,
    method: str = "REGISTER",
) -> Credentials:
    """What a phone sends back, through the wire format both ways."""
    challenge = parse_challenge(challenge.header_value())
    creds = respond(
        challenge,
        method=method,
        uri=URI,
        username="101",
        password=password,
        cnonce="0a4f113b",
        nc=nc,
    )
    return parse_credentials(creds.header_value())


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-256-sess", "MD5-sess"])
def test_round_trip_with_password_and_with_ha1(algorithm: str) -> None:
    mgr = NonceManager(secret=b"k" * 32, ttl=300)
    (challenge,) = mgr.challenge(REALM, T0, algorithms=(algorithm,))
    creds = _answer(challenge)
    assert creds.algorithm == algorithm
    assert mgr.verify(creds, "REGISTER", now=T0 + 1, realm=REALM, password="s3cret") is (
        AuthResult.OK
    )
    base = algorithm.removesuffix("-sess")
    stored = {base: ha1("101", REALM, "s3cret", base)}
    again = _answer(challenge, nc=2)
    assert mgr.verify(again, "REGISTER", now=T0 + 2, realm=REALM, ha1=stored) is AuthResult.OK


def test_challenges_one_per_algorithm_most_preferred_first() -> None:
    mgr = NonceManager()
    sha, md5 = mgr.challenge(REALM, T0)
    assert (sha.algorithm, md5.algorithm) == ("SHA-256", "MD5")
    assert sha.nonce == md5.nonce
    assert sha.header_value() == (
        f'Digest realm="acme.example", nonce="{sha.nonce}", algorithm=SHA-256, qop="auth"'
    )
    (stale,) = mgr.challenge(REALM, T0, stale=True, algorithms=("MD5",))
    assert stale.header_value().endswith('algorithm=MD5, qop="auth", stale=true')
    assert mgr.challenge(REALM, T0)[0].nonce != sha.nonce
    with pytest.raises(ValueError):
        mgr.challenge(REALM, T0, algorithms=("SHA-512",))


def test_challenge_header_value_format() -> None:
    challenge = Challenge(
        "acme.example", "n1", algorithm="SHA-256", qop=("auth",), opaque="o1", stale=True
    )
    assert challenge.header_value() == (
        'Digest realm="acme.example", nonce="n1", opaque="o1", algorithm=SHA-256, qop="auth", '
        "stale=true"
    )
    assert parse_challenge(challenge.header_value()) == challenge


def test_stale_nonce_after_ttl() -> None:
    mgr = NonceManager(ttl=300)
    (challenge,) = mgr.challenge(REALM, T0, algorithms=("MD5",))
    creds = _answer(challenge)
    late = T0 + 301
    assert mgr.verify(creds, "REGISTER", now=late, realm=REALM, password="s3cret") is (
        AuthResult.STALE
    )
    # Stale only when the digest is right (RFC 2617 §3.2.1): a guesser learns nothing.
    wrong = _answer(challenge, password="guess")
    assert mgr.verify(wrong, "REGISTER", now=late, realm=REALM, password="s3cret") is (
        AuthResult.WRONG_PASSWORD
    )
    fresh = mgr.challenge(REALM, late, stale=True)[0]
    assert mgr.verify(_answer(fresh), "REGISTER", now=late, realm=REALM, password="s3cret") is (
        AuthResult.OK
    )


def _with_nonce(creds: Credentials, nonce: str) -> Credentials:
    """The answer a client holding the password would give to `nonce`."""
    return _answer(Challenge(creds.realm, nonce, algorithm=creds.algorithm, qop=("auth",)))


@pytest.mark.parametrize(
    "forge",
    [
        lambda nonce: base64.urlsafe_b64encode(bytes(36)).decode(),
        lambda nonce: nonce[:-2] + ("AA" if nonce[-2:] != "AA" else "BB"),
        lambda nonce: nonce[:10] + ("x" if nonce[10] != "x" else "y") + nonce[11:],
        lambda nonce: nonce[:-1],
        lambda nonce: nonce + "=",
        lambda nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        lambda nonce: "é" * 48,
        lambda nonce: NonceManager().challenge(REALM, T0)[0].nonce,  # another secret
    ],
)
def test_forged_nonce(forge: Callable[[str], str]) -> None:
    mgr = NonceManager(ttl=300)
    (challenge,) = mgr.challenge(REALM, T0, algorithms=("SHA-256",))
    creds = _with_nonce(_answer(challenge), forge(challenge.nonce))
    assert mgr.verify(creds, "REGISTER", now=T0, realm=REALM, password="s3cret") is (
        AuthResult.BAD_NONCE
    )


def test_nonce_is_bound_to_its_realm() -> None:
    mgr = NonceManager()
    (other,) = mgr.challenge("other.example", T0, algorithms=("MD5",))
    creds = _answer(Challenge(REALM, other.nonce, qop=("auth",)))
    assert mgr.verify(creds, "REGISTER", now=T0, realm=REALM, password="s3cret") is (
        AuthResult.BAD_NONCE
    )
    # Credentials for another protection space do not pass either.
    creds = _answer(other)
    assert mgr.verify(creds, "REGISTER", now=T0, realm=REALM, password="s3cret") is (
        AuthResult.BAD_NONCE
    )


def test_nonce_count_replay() -> None:
    mgr = NonceManager()
    challenge = mgr.challenge(REALM, T0)[0]

    def verify(nc: int) -> AuthResult:
        creds = _answer(challenge, nc=nc)
        return mgr.verify(creds, "REGISTER", now=T0 + nc, realm=REALM, password="s3cret")

    assert verify(1) is AuthResult.OK
    assert verify(1) is AuthResult.REPLAY
    assert verify(2) is AuthResult.OK
    assert verify(5) is AuthResult.OK
    assert verify(3) is AuthResult.REPLAY


def test_rfc2069_answer_is_accepted_once() -> None:
    mgr = NonceManager()
    (offered,) = mgr.challenge(REALM, T0, algorithms=("MD5",))
    # An old client that ignores qop answers in the RFC 2069 form.
    old = respond(
        Challenge(REALM, offered.nonce),
        method="REGISTER",
        uri=URI,
        username="101",
        password="s3cret",
        cnonce="unused",
    )
    assert (old.qop, old.nc, old.cnonce) == (None, None, None)
    creds = parse_credentials(old.header_value())
    assert mgr.verify(creds, "REGISTER", now=T0, realm=REALM, password="s3cret") is AuthResult.OK
    assert mgr.verify(creds, "REGISTER", now=T0, realm=REALM, password="s3cret") is (
        AuthResult.REPLAY
    )


def test_wrong_password_and_wrong_method() -> None:
    mgr = NonceManager()
    challenge = mgr.challenge(REALM, T0)[0]
    creds = _answer(challenge, password="guess")
    assert mgr.verify(creds, "REGISTER", now=T0, realm=REALM, password="s3cret") is (
        AuthResult.WRONG_PASSWORD
    )
    creds = _answer(challenge, method="INVITE")
    assert mgr.verify(creds, "REGISTER", now=T0, realm=REALM, password="s3cret") is (
        AuthResult.WRONG_PASSWORD
    )
    # A failed attempt does not burn the nonce-count for the real client.
    creds = _answer(challenge)
    assert mgr.verify(creds, "REGISTER", now=T0, realm=REALM, password="s3cret") is AuthResult.OK


def test_upper_case_response_hex_is_accepted() -> None:
    mgr = NonceManager()
    challenge = mgr.challenge(REALM, T0)[0]
    creds = _answer(challenge)
    shouting = replace(creds, response=creds.response.upper())
    assert mgr.verify(shouting, "REGISTER", now=T0, realm=REALM, password="s3cret") is (
        AuthResult.OK
    )


@pytest.mark.parametrize(
    "change",
    [
        {"algorithm": "SHA-512-256"},
        {"qop": "auth-int"},
        {"cnonce": None},
        {"nc": None},
        {"nc": "1"},
        {"nc": "0000000g"},
        {"nc": "+0000001"},
        {"qop": None, "algorithm": "MD5-sess"},
    ],
)
def test_malformed_credentials(change: dict[str, Any]) -> None:
    mgr = NonceManager()
    (challenge,) = mgr.challenge(REALM, T0, algorithms=("MD5-sess",))
    creds = replace(_answer(challenge), **change)
    assert mgr.verify(creds, "REGISTER", now=T0, realm=REALM, password="s3cret") is (
        AuthResult.MALFORMED
    )


def test_ha1_store_without_the_clients_algorithm_is_malformed() -> None:
    mgr = NonceManager()
    (challenge,) = mgr.challenge(REALM, T0, algorithms=("SHA-256",))
    stored = {"MD5": ha1("101", REALM, "s3cret")}
    assert mgr.verify(_answer(challenge), "REGISTER", now=T0, realm=REALM, ha1=stored) is (
        AuthResult.MALFORMED
    )
    with pytest.raises(TypeError):
        mgr.verify(_answer(challenge), "REGISTER", now=T0, realm=REALM)


def test_tracked_nonces_are_pruned_and_capped() -> None:
    mgr = NonceManager(ttl=10, max_tracked=3)
    challenges = [mgr.challenge(REALM, T0 + i)[0] for i in range(5)]
    for i, challenge in enumerate(challenges):
        creds = _answer(challenge)
        assert mgr.verify(creds, "REGISTER", now=T0 + i, realm=REALM, password="s3cret") is (
            AuthResult.OK
        )
        assert len(mgr) <= 3
    # The cap forgot the counts of the first two nonces: they must not be trusted afresh.
    again = _answer(challenges[0], nc=1)
    assert mgr.verify(again, "REGISTER", now=T0 + 5, realm=REALM, password="s3cret") is (
        AuthResult.STALE
    )
    # Expired nonces leave on the next insertion.
    late = mgr.challenge(REALM, T0 + 100)[0]
    assert mgr.verify(_answer(late), "REGISTER", now=T0 + 100, realm=REALM, password="s3cret") is (
        AuthResult.OK
    )
    assert len(mgr) == 1


def test_parse_quoted_string_escapes_and_odd_whitespace() -> None:
    creds = parse_credentials(
        'digest   UserName = "Mu\\"fa\\\\sa" ,REALM="r\\e",nonce=abc/+=  ,\t'
        'uri = "sip:x@y;a=\\"b,c\\"", ,response="00", X-Vendor = "a b",'
    )
    assert creds.username == 'Mu"fa\\sa'
    assert creds.realm == "re"
    assert creds.nonce == "abc/+="
    assert creds.uri == 'sip:x@y;a="b,c"'
    assert creds.response == "00"
    assert creds.extra == {"x-vendor": "a b"}
    assert parse_credentials(creds.header_value()) == creds


def test_parse_challenge_fields() -> None:
    challenge = parse_challenge(
        'Digest realm="r", domain="sip:a sip:b", nonce="n", stale=TRUE, algorithm=md5, '
        'qop=" auth , auth-int", charset=UTF-8'
    )
    assert challenge == Challenge(
        "r",
        "n",
        algorithm="md5",
        qop=("auth", "auth-int"),
        stale=True,
        domain="sip:a sip:b",
        extra={"charset": "UTF-8"},
    )
    assert challenge.answerable
    assert not parse_challenge('Digest realm="r", nonce="n", stale="no"').stale


@pytest.mark.parametrize(
    ("algorithm", "qop", "answerable"),
    [
        ("SHA-512-256", ("auth",), False),
        ("MD5", ("auth-int",), False),
        ("MD5-sess", (), False),
        (None, (), True),
        ("sha-256", ("AUTH",), True),
    ],
)
def test_answerable(algorithm: str | None, qop: tuple[str, ...], answerable: bool) -> None:
    challenge = Challenge(REALM, "n", algorithm=algorithm, qop=qop)
    assert challenge.answerable is answerable
    if not answerable:
        with pytest.raises(ValueError):
            respond(challenge, method="REGISTER", uri=URI, username="u", password="p", cnonce="c")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        "Digest",
        'Digestrealm="r", nonce="n"',
        'Digest realm="r" nonce="n"',
        'Digest realm="r, nonce="n"',
        'Digest realm="r", nonce="n", realm="s"',
        'Digest realm="r", nonce',
        'Digest realm="r", nonce=',
        'Digest realm="r", =n',
        'Digest realm="r", nonce="n"x',
        'Digest realm="r", nonce=n"x"',
        'Digest realm="r", no nce="n"',
        'Digest realm="r"',
        'Digest nonce="n"',
        'Digest realm="r", nonce="n\\"',
    ],
)
def test_malformed_challenge_raises(value: str) -> None:
    with pytest.raises(ParseError):
        parse_challenge(value)


@pytest.mark.parametrize(
    "value",
    [
        'Digest realm="r", nonce="n", uri="u", response="x"',
        'Digest username="u", nonce="n", uri="u", response="x"',
        'Digest username="u", realm="r", uri="u", response="x"',
        'Digest username="u", realm="r", nonce="n", response="x"',
        'Digest username="u", realm="r", nonce="n", uri="u"',
        'Digest username="u" realm="r", nonce="n", uri="u", response="x"',
        'Bearer username="u", realm="r", nonce="n", uri="u", response="x"',
    ],
)
def test_malformed_credentials_raise(value: str) -> None:
    with pytest.raises(ParseError):
        parse_credentials(value)


# Fragments that reach deep into the grammar, which random text rarely does.
_SYNTAX = [" ", "\t", "\r\n", ",", "=", '"', "\\", "x", "é", "\x00", "Digest", "auth"]
_NAMES = ["realm", "nonce", "username", "uri", "response", "qop", "nc", "stale"]
_PIECES = st.sampled_from(_SYNTAX) | st.sampled_from(_NAMES)


@given(st.one_of(st.text(), st.lists(_PIECES).map("".join)))
def test_parsers_raise_only_parse_error(value: str) -> None:
    for parse in (parse_credentials, parse_challenge):
        with suppress(ParseError):
            parse(value)


@given(st.text(), st.text(), st.text())
def test_any_text_survives_quoting(username: str, realm: str, uri: str) -> None:
    creds = Credentials(username, realm, "n", uri, "r", extra={"x": username})
    assert parse_credentials(creds.header_value()) == creds
