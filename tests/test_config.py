"""The daemon configuration loader: the example loads, and every mistake names file:line."""

from ipaddress import ip_network
from pathlib import Path

import pytest

from switch.config import Config, ConfigError, HostPort, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "softswitch.yaml"

MINIMAL = """\
tenants:
  - name: acme
    domain: acme.example
    users:
      - {extension: "101", password: s3cret}
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    """Load text as softswitch.yaml; return its problems with the file name cut to 'F'."""
    path = tmp_path / "softswitch.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    rendered = str(caught.value).splitlines()
    assert rendered == [str(problem) for problem in caught.value.problems]
    return [line.replace(str(path), "F", 1) for line in rendered]


# The line numbers below are of this frozen copy, so editing the shipped
# example does not move them.
BASE = Path(__file__).parent / "config_cases" / "base.yaml"


def example_with(old: str, new: str) -> str:
    text = BASE.read_text()
    assert old in text
    return text.replace(old, new, 1)


def test_example_loads_with_the_documented_values() -> None:
    config = load_config(EXAMPLE)
    assert [(e.transport, e.address, e.port) for e in config.sip.listen] == [
        ("udp", "127.0.0.1", 5060),
        ("tcp", "127.0.0.1", 5060),
    ]
    assert config.registrar.min_expires == 60
    assert config.security.auth_algorithms == ("MD5",)
    assert config.http.listen == HostPort(host="127.0.0.1", port=9090)
    assert config.store.sqlite_path == Path("var/softswitch.db")
    acme = config.tenant_by_domain("ACME.example")
    assert acme is not None and acme.name == "acme"
    alice = acme.user("101")
    assert alice is not None and alice.name == "Alice Ivanova"
    assert acme.user("199") is None
    assert config.tenant_by_domain("initech.example") is None


def test_the_example_gateway_and_did_are_valid_once_uncommented(tmp_path: Path) -> None:
    lines = EXAMPLE.read_text().splitlines()
    first = lines.index("# gateways:")
    last = lines.index("", first)
    tenants = [i for i, line in enumerate(lines) if i > last and line.startswith("    # ")]
    text = "\n".join(
        line.replace("# ", "", 1) if first <= i < last or i in tenants else line
        for i, line in enumerate(lines)
    )
    config = load_text(tmp_path, text)
    acme = config.tenant_by_did("+74951234567")
    assert acme is not None and acme.name == "acme" and acme.gateways == ("carrier",)
    assert acme.caller_id_of("101") == "+74951234567"
    assert config.gateway("carrier").max_calls == 30


def test_defaults_match_the_example(tmp_path: Path) -> None:
    path = tmp_path / "softswitch.yaml"
    path.write_text(MINIMAL)
    minimal, example = load_config(path), load_config(EXAMPLE)
    for section in ("sip", "registrar", "security", "http", "store", "log"):
        assert getattr(minimal, section) == getattr(example, section), section


def test_sections_with_every_key_commented_out_take_defaults(tmp_path: Path) -> None:
    path = tmp_path / "softswitch.yaml"
    path.write_text("sip:\n  # user_agent: x\nregistrar:\n" + MINIMAL)
    assert load_config(path).sip.user_agent == "softswitch"


def test_int_extension_is_accepted_and_a_leading_zero_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "softswitch.yaml"
    path.write_text(
        MINIMAL.replace('{extension: "101", password: s3cret}', "{extension: 101, password: 1234}")
        + "      - {extension: 0102, password: x}\n"
    )
    (acme,) = load_config(path).tenants
    assert [(u.extension, u.password, u.name) for u in acme.users] == [
        ("101", "1234", "101"),
        ("0102", "x", "0102"),
    ]


def test_ipv6_http_listen_and_whitelist_networks(tmp_path: Path) -> None:
    path = tmp_path / "softswitch.yaml"
    path.write_text(
        'http: {listen: "[::1]:9090"}\nsecurity: {ban: {whitelist: [10.1.2.3/8, "::1"]}}\n'
        + MINIMAL
    )
    config = load_config(path)
    assert config.http.listen == HostPort(host="::1", port=9090)
    assert config.security.ban.whitelist == (ip_network("10.0.0.0/8"), ip_network("::1"))


def test_tls_listener_with_existing_files(tmp_path: Path) -> None:
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("PEM")
    path = tmp_path / "softswitch.yaml"
    path.write_text(
        "sip:\n  listen:\n"
        f"    - {{transport: tls, address: 0.0.0.0, port: 5061, "
        f"cert: {tmp_path}/tls.crt, key: {tmp_path}/tls.key}}\n" + MINIMAL
    )
    (listen,) = load_config(path).sip.listen
    assert listen.cert == tmp_path / "tls.crt"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "min_expires: 60",
            "min_expires: sixty",
            "F:16: registrar.min_expires: got 'sixty' (expected an integer)",
            id="bad-type",
        ),
        pytest.param(
            "  user_agent: softswitch",
            "  user_agnt: softswitch",
            "F:13: sip: unknown key 'user_agnt' (did you mean 'user_agent'? "
            "expected one of: listen, public_address, user_agent, t1, "
            "udp_buffer)",
            id="unknown-key",
        ),
        pytest.param(
            'extension: "102"',
            "extension: 101",
            "F:46: tenants[0].users[1].extension: duplicate extension '101' in tenant 'acme'",
            id="duplicate-extension",
        ),
        pytest.param(
            "  max_contacts: 10",
            "  max_contacts: 10\n  min_expires: 30",
            "F:20: registrar: duplicate key 'min_expires' (also at line 16)",
            id="duplicate-yaml-key",
        ),
        pytest.param(
            "  level: info",
            "  level: info\n   format: json",
            "F:39: YAML syntax error: mapping values are not allowed here",
            id="yaml-syntax",
        ),
        pytest.param(
            "    # - {transport: tls, address: 0.0.0.0, port: 5061, "
            "cert: /etc/softswitch/tls.crt, key: /etc/softswitch/tls.key}",
            "    - {transport: tls, address: 0.0.0.0, port: 5061}",
            "F:9: sip.listen[2].cert: transport tls needs cert: /path/to/file",
            id="tls-without-cert",
        ),
        pytest.param(
            "min_expires: 60",
            "min_expires: 4000",
            "F:16: registrar.min_expires: min_expires 4000, default_expires 3600, "
            "max_expires 3600 (expected min_expires <= default_expires <= max_expires)",
            id="min-above-max",
        ),
        pytest.param(
            "listen: 127.0.0.1:9090",
            "listen: 127.0.0.1",
            "F:31: http.listen: '127.0.0.1' is not host:port "
            '(expected host:port, e.g. 127.0.0.1:9090, or in quotes "[::1]:9090")',
            id="http-listen-without-port",
        ),
        pytest.param(
            "listen: 127.0.0.1:9090",
            'listen: "::1:9090"',
            "F:31: http.listen: '::1:9090': an IPv6 address needs brackets "
            '(expected host:port, e.g. 127.0.0.1:9090, or in quotes "[::1]:9090")',
            id="http-listen-ipv6-without-brackets",
        ),
        pytest.param(
            "transport: udp",
            "transport: sctp",
            "F:7: sip.listen[0].transport: got 'sctp' (expected one of 'udp', 'tcp' or 'tls')",
            id="not-a-choice",
        ),
        pytest.param(
            'password: "s3cret-101"',
            "password: yes",
            "F:45: tenants[0].users[0].password: got 'yes' "
            '(expected a string; YAML reads yes as another type, so write "yes")',
            id="unquoted-yaml-boolean",
        ),
        pytest.param(
            "whitelist: []",
            "whitelist: [10.0.0.0/8, office]",
            "F:28: security.ban.whitelist[1]: got 'office' "
            "(expected an IP address or network, e.g. 10.0.0.0/8)",
            id="bad-network",
        ),
        pytest.param(
            "url: sqlite:///var",
            "url: mysql:///var",
            "F:35: store.url: 'mysql:///var/softswitch.db' is not a supported "
            "store (expected sqlite:///relative/path, sqlite:////absolute/path "
            "or postgresql://user:password@host/database)",
            id="bad-store-url",
        ),
        pytest.param(
            "domain: globex.example",
            "domain: ACME.example",
            "F:49: tenants[1].domain: domain 'acme.example' already belongs to tenant 'acme'",
            id="duplicate-domain",
        ),
    ],
)
def test_each_mistake_names_its_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert problems(tmp_path, example_with(old, new)) == [expected]


def test_media_latching_options(tmp_path: Path) -> None:
    media = "media:\n  latch_window: 0\n  strict_source: maybe\n  hold_timeout: soon\n"
    assert problems(tmp_path, media + "  kernel: always\n" + MINIMAL) == [
        "F:2: media.latch_window: got '0' (expected a number greater than 0.0)",
        "F:3: media.strict_source: got 'maybe' (expected true or false)",
        "F:4: media.hold_timeout: got 'soon' (expected an integer)",
        "F:5: media.kernel: got 'always' (expected one of 'auto', 'on' or 'off')",
    ]
    good = tmp_path / "good.yaml"
    good.write_text("media:\n  latch_window: 1.5\n  strict_source: true\n  kernel: off\n" + MINIMAL)
    relay = load_config(good).media.relay_config()
    assert (relay.latch_window, relay.strict_source, relay.relatch_on_ssrc) == (1.5, True, True)
    assert relay.kernel == "off"


def test_missing_tenants(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().split("tenants:")[0]
    assert problems(tmp_path, text) == ["F:5: missing required key 'tenants'"]
    assert problems(tmp_path, "") == ["F:1: missing required key 'tenants'"]


def test_tls_files_must_exist(tmp_path: Path) -> None:
    text = example_with("    # - {transport: tls", "    - {transport: tls")
    assert problems(tmp_path, text) == [
        "F:9: sip.listen[2].cert: no such file '/etc/softswitch/tls.crt' (expected the PEM cert)"
    ]


def test_all_problems_are_reported_in_line_order(tmp_path: Path) -> None:
    text = MINIMAL.replace("domain: acme.example", "domain: acme.example\n    colour: red")
    text = "log: {level: loud}\n" + text + "      - {password: x}\n"
    assert problems(tmp_path, text) == [
        "F:1: log.level: got 'loud' (expected one of 'debug', 'info', 'warning' or 'error')",
        "F:5: tenants[0]: unknown key 'colour' (did you mean 'country'? expected one of: "
        "name, domain, country, gateways, caller_id, dids, users, routes)",
        "F:8: tenants[0].users[1]: missing required key 'extension'",
    ]


# -- gateways and company numbers (DIDs) ---------------------------------------------------

GATEWAYS = """\
gateways:
  - {name: carrier, address: 192.0.2.10, format: e164, sources: [192.0.2.0/28]}
  - {name: backup, address: "192.0.2.20:5080", transport: tcp, tech_prefix: "99#", max_calls: 2}
tenants:
  - name: acme
    domain: acme.example
    country: RU
    gateways: [carrier, backup]
    caller_id: 8 495 123-45-67
    dids:
      +74951234567: 101
      "84951234568": 102
    users:
      - {extension: "101", password: s3cret}
      - {extension: "102", password: s3cret, caller_id: +7 (495) 123-45-68}
      - {extension: "103", password: s3cret}
  - name: globex
    domain: globex.example
    gateways: [carrier]
    users:
      - {extension: "101", password: s3cret}
"""


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "softswitch.yaml"
    path.write_text(text)
    return load_config(path)


def test_gateways_dids_and_caller_ids_are_read_in_e164(tmp_path: Path) -> None:
    config = load_text(tmp_path, GATEWAYS)
    acme = config.tenant_by_did("+74951234568")
    assert acme is not None and acme.name == "acme"
    # an unquoted +7... keeps its '+' (YAML 1.1 would read it as the integer 74951234567)
    assert acme.numbers == {"+74951234567": "101", "+74951234568": "102"}
    assert config.tenant_by_did("+74951234569") is None
    assert acme.caller_id_of("101") == "+74951234567"  # the tenant's, from national format
    assert acme.caller_id_of("102") == "+74951234568"  # the user's own
    globex = config.tenant_by_domain("globex.example")
    assert globex is not None and globex.caller_id_of("101") is None  # nothing to show: anonymous
    carrier, backup = config.gateway("carrier"), config.gateway("backup")
    assert (carrier.address.host, carrier.address.port, carrier.transport) == (
        "192.0.2.10", 5060, "udp",
    )  # fmt: skip
    assert carrier.dial_string("+12125550100") == "12125550100"
    assert backup.dial_string("+12125550100") == "99#+12125550100"


def test_gateways_are_matched_by_source_address(tmp_path: Path) -> None:
    config = load_text(tmp_path, GATEWAYS)

    def name(transport: str, host: str, port: int) -> str | None:
        gateway = config.gateway_at(transport, host, port)
        return gateway.name if gateway is not None else None

    assert name("udp", "192.0.2.10", 5060) == "carrier"
    assert name("udp", "192.0.2.10", 5061) == "carrier"  # in its sources 192.0.2.0/28 (any port)
    assert name("udp", "192.0.2.14", 40000) == "carrier"
    assert name("udp", "192.0.2.16", 5060) is None
    assert name("tcp", "192.0.2.20", 43210) == "backup"  # a TCP client port is the peer's choice
    assert name("udp", "192.0.2.20", 5080) is None  # backup speaks TCP only
    assert name("udp", "198.51.100.1", 5060) is None


def test_strip_and_prefix_rewrite_the_number(tmp_path: Path) -> None:
    text = GATEWAYS.replace("format: e164,", "format: e164, strip: 1, prefix: 8,")
    carrier = load_text(tmp_path, text).gateway("carrier")
    assert carrier.dial_string("+74951234567") == "84951234567"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "gateways: [carrier, backup]",
            "gateways: [carrier, bakup]",
            "F:8: tenants[0].gateways[1]: unknown gateway 'bakup' (known: carrier, backup)",
            id="unknown-gateway",
        ),
        pytest.param(
            "    gateways: [carrier]\n",
            '    gateways: [carrier]\n    dids: {"+7 495 123-45-67": 101}\n',
            "F:20: tenants[1].dids.+7 495 123-45-67: DID '+7 495 123-45-67 (+74951234567)' "
            "already belongs to tenant 'acme'",
            id="did-of-two-tenants",
        ),
        pytest.param(
            '"84951234568": 102',
            '"84951234568": 104',
            "F:12: tenants[0].dids.84951234568: DID '84951234568' rings unknown extension '104' "
            "(known: 101, 102, 103)",
            id="did-to-unknown-extension",
        ),
        pytest.param(
            '"84951234568": 102',
            '"84951234567": 102',
            "F:12: tenants[0].dids.84951234567: DID '84951234567' is listed twice "
            "(as +74951234567)",
            id="did-twice-in-a-tenant",
        ),
        pytest.param(
            "caller_id: 8 495 123-45-67",
            "caller_id: 123",
            "F:9: tenants[0].caller_id: '123' is not a phone number (expected national in RU "
            "or E.164, e.g. '+74951234567')",
            id="bad-caller-id",
        ),
        pytest.param(
            "country: RU",
            "country: XX",
            "F:7: tenants[0].country: 'XX' is not a country code (expected ISO 3166 alpha-2, "
            "e.g. RU, US)",
            id="bad-country",
        ),
        pytest.param(
            "address: 192.0.2.10,",
            "address: sip.carrier.example,",
            "F:2: gateways[0].address: 'sip.carrier.example' is not host:port (expected host:port, "
            'e.g. 127.0.0.1:9090, or in quotes "[::1]:9090")',
            id="gateway-without-port",
        ),
        pytest.param(
            '"192.0.2.20:5080", transport: tcp',
            '"192.0.2.10:5060", transport: udp',
            "F:3: gateways[1].address: 192.0.2.10:5060 is also gateway 'carrier' (expected one "
            "gateway per address: calls are matched by it)",
            id="two-gateways-one-address",
        ),
        pytest.param(
            "transport: tcp,",
            "transport: sctp,",
            "F:3: gateways[1].transport: got 'sctp' (expected one of 'udp', 'tcp' or 'tls')",
            id="gateway-transport",
        ),
        pytest.param(
            "transport: tcp,",
            "transport: tcp, tls_name: sbc.carrier.example,",
            "F:3: gateways[1].tls_name: tls_name is only used with transport tls",
            id="gateway-tls-option-without-tls",
        ),
        pytest.param(
            "transport: tcp,",
            "transport: tls, tls_ca: /no/such/ca.pem,",
            "F:3: gateways[1].tls_ca: no such file '/no/such/ca.pem' (expected the PEM CA "
            "certificates)",
            id="gateway-tls-ca-missing",
        ),
    ],
)
def test_gateway_and_did_mistakes_name_their_line(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GATEWAYS
    assert problems(tmp_path, GATEWAYS.replace(old, new, 1)) == [expected]


def test_a_gateway_named_by_dns_is_refused_with_the_reason(tmp_path: Path) -> None:
    text = GATEWAYS.replace("address: 192.0.2.10,", 'address: "sip.carrier.example:5060",')
    assert problems(tmp_path, text) == [
        "F:2: gateways[0].address: 'sip.carrier.example:5060': the host is not an IP address "
        "(expected e.g. 192.0.2.10:5060; gateways are matched by the address they send from, "
        "so no DNS names)"
    ]


def test_media_workers(tmp_path: Path) -> None:
    assert problems(tmp_path, "media:\n  workers: -1\n" + MINIMAL) == [
        "F:2: media.workers: got '-1' (expected a number of at least 0)"
    ]
    assert problems(tmp_path, "media:\n  workers: lots\n" + MINIMAL) == [
        "F:2: media.workers: got 'lots' (expected an integer)"
    ]
    good = tmp_path / "good.yaml"
    good.write_text("media:\n  workers: 4\n" + MINIMAL)
    assert load_config(good).media.workers == 4
    assert load_config(EXAMPLE).media.workers == 0  # the example: media in the switch
