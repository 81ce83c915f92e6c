"""The daemon configuration: `config/softswitch.yaml` read into frozen, validated models.

`load_config` is the way a file becomes a `Config`. It reports every problem it finds at
once, each as `FILE:LINE: where: what is wrong (expected ...)`, so `softswitch check` and a
reload can refuse a bad file whole and show the operator exactly where to look. Lines come
from the composed YAML node tree, walked along pydantic's error locations.

Gateways (trunk peers known by address) and each tenant's company numbers (DIDs) are checked
here across the whole file: a tenant's gateway must exist, a DID belongs to one tenant and
points at one of its extensions or routes. A route (a number the switch answers itself with a
built-in call handler) is not an extension, names a handler that exists, plays prompts that
exist in the configured prompt set (or WAV files that exist), and needs the relay.
Numbers an operator writes (DIDs, caller IDs) may be national in the tenant's ``country``; they
are kept in E.164 (switch/numbers.py).

It does not open sockets, create the database or read dialplans; paths it checks (TLS
certificate and key, prompt WAVs) are taken as written, relative ones from the working
directory.
"""

from __future__ import annotations

import difflib
import functools
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from media.config import RelayConfig
from media.prompts import Prompts
from switch.numbers import COUNTRIES, to_e164
from switch.yamlsource import (
    ConfigError,
    Loc,
    duplicate_keys,
    read_yaml,
    show,
    validation_problems,
)

# One error type for every check written here; "at" extends the error's location so a
# check on a whole model can point at the exact key that is wrong.
_ERROR_TYPE = "softswitch"


def _invalid(message: str, *, at: Loc = ()) -> PydanticCustomError:
    return PydanticCustomError(_ERROR_TYPE, "{message}", {"message": message, "at": at})


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        # A section whose keys are all commented out is YAML null; the operator means defaults.
        return {} if data is None else data


def _on_off(value: object) -> object:
    """YAML 1.1 reads a bare `on`/`off` as a boolean: take it as the word it was."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def _ip(value: str) -> str:
    try:
        return str(ip_address(value))
    except ValueError:
        raise _invalid(f"{value!r} is not an IP address (expected e.g. 0.0.0.0 or ::)") from None


class Listen(_Section):
    transport: Literal["udp", "tcp", "tls"]
    address: Annotated[str, AfterValidator(_ip)]
    port: int = Field(ge=1, le=65535)
    cert: Path | None = None
    key: Path | None = None

    @model_validator(mode="after")
    def _tls_files(self) -> Self:
        for name in ("cert", "key"):
            path: Path | None = getattr(self, name)
            if self.transport != "tls":
                if path is not None:
                    raise _invalid(f"{name} is only used with transport tls", at=(name,))
            elif path is None:
                raise _invalid(f"transport tls needs {name}: /path/to/file", at=(name,))
            elif not path.is_file():
                raise _invalid(f"no such file {str(path)!r} (expected the PEM {name})", at=(name,))
        return self


class Sip(_Section):
    listen: tuple[Listen, ...] = Field(
        default=(
            Listen(transport="udp", address="127.0.0.1", port=5060),
            Listen(transport="tcp", address="127.0.0.1", port=5060),
        ),
        min_length=1,
    )
    public_address: str | None = Field(default=None, min_length=1)
    user_agent: str = Field(default="softswitch", min_length=1)
    # RFC 3261 T1, the round-trip estimate (s): retransmissions over UDP start at T1 and an
    # unanswered request gives up after 64*T1 (Timer B/F: 32 s at the default 0.5).
    t1: float = Field(default=0.5, ge=0.05, le=5.0)
    # Receive buffer of each UDP socket (bytes): what arrives while the process is busy (a
    # garbage collection, a burst of REGISTERs) waits here instead of being dropped by the
    # kernel and retransmitted 500 ms later. Linux caps it at net.core.rmem_max unless the
    # daemon may override that (CAP_NET_ADMIN); the daemon warns when it got less.
    udp_buffer: int = Field(default=8 << 20, ge=64 << 10, le=1 << 30)


class Registrar(_Section):
    min_expires: PositiveInt = 60
    max_expires: PositiveInt = 3600
    default_expires: PositiveInt = 3600
    max_contacts: PositiveInt = 10

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        low, default, high = self.min_expires, self.default_expires, self.max_expires
        if not low <= default <= high:
            raise _invalid(
                f"min_expires {low}, default_expires {default}, max_expires {high} "
                "(expected min_expires <= default_expires <= max_expires)",
                at=("min_expires" if low > high else "default_expires",),
            )
        return self


@functools.lru_cache(maxsize=4096)
def _source_ip(host: str) -> IPv4Address | IPv6Address | None:
    """A request's source address, parsed once per address (every INVITE asks)."""
    try:
        return ip_address(host)
    except ValueError:
        return None


def _network(value: Any) -> Any:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    try:
        # strict=False: 10.1.2.3/8 means "the /8 that 10.1.2.3 is in", not a typo to refuse.
        return ip_network(value, strict=False)
    except (TypeError, ValueError):
        raise _invalid(
            f"got {show(value)} (expected an IP address or network, e.g. 10.0.0.0/8)"
        ) from None


class Media(_Section):
    # Relay RTP through the switch (NAT-safe, no one-way audio); false: SDP goes end to end.
    relay: bool = True
    address: Annotated[str, AfterValidator(_ip)] = "127.0.0.1"  # media sockets bind here
    advertise: Annotated[str, AfterValidator(_ip)] | None = None  # written into SDP, if not address
    port_min: int = Field(default=30000, ge=1024, le=65535)
    port_max: int = Field(default=39999, ge=1024, le=65535)
    timeout: PositiveInt = 60  # seconds without RTP from a talking phone before the call ends
    hold_timeout: PositiveInt = 3600  # the same for a phone on hold or one that never sent
    # Symmetric RTP latching (media.latch): seconds after each offer/answer in which a phone's
    # real source (behind NAT) is learned; then it is locked and other senders are dropped.
    latch_window: PositiveFloat = 3.0
    strict_source: bool = False  # accept media only from the SDP address (fixed trunks)
    relatch_on_ssrc: bool = True  # a locked stream may move when its SSRC comes from elsewhere
    # Latched RTP forwarded by the kernel (eBPF): auto (where it may, as root on Linux 6.6+),
    # on (refuse to start without it), off (always by the relay process).
    kernel: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = "auto"
    # Prompts the switch plays: the language of the packaged set (en, ru), or a folder of
    # one's own with the same layout (<folder>/<language>/<name>.wav).
    language: Literal["en", "ru"] = "en"
    prompts: Path | None = None
    recordings: Path = Path("recordings")  # where recorded calls go (relative: to the cwd)
    # Processes that carry the media (media.workers: relay and engine), so media uses more
    # than the switch's core; 0: media in the switch's own process.
    workers: int = Field(default=0, ge=0, le=64)

    @model_validator(mode="after")
    def _relay_accepts(self) -> Self:
        try:
            self.relay_config()
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        return self

    def relay_config(self) -> RelayConfig:
        return RelayConfig(
            address=self.address,
            advertise=self.advertise,
            port_min=self.port_min,
            port_max=self.port_max,
            timeout=float(self.timeout),
            silent_timeout=float(self.hold_timeout),
            latch_window=self.latch_window,
            strict_source=self.strict_source,
            relatch_on_ssrc=self.relatch_on_ssrc,
            kernel=self.kernel,
        )


class Calls(_Section):
    # seconds the callee's phones ring before the caller gets 480 No Answer
    ring_timeout: PositiveInt = 60
    # calls one user may be in at once (placed or taken; 0: no limit): over it, 403
    max_per_user: NonNegativeInt = 4
    # calls of one tenant at once (0: no limit): over it, 486; both guard against toll fraud
    max_per_tenant: NonNegativeInt = 30


class Ban(_Section):
    failures: PositiveInt = 10
    window: PositiveInt = 60
    duration: PositiveInt = 600
    whitelist: tuple[Annotated[IPv4Network | IPv6Network, BeforeValidator(_network)], ...] = ()


class Security(_Section):
    nonce_ttl: PositiveInt = 300
    auth_algorithms: tuple[Literal["SHA-256", "MD5"], ...] = Field(default=("MD5",), min_length=1)
    ban: Ban = Ban()


class HostPort(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str
    port: int


def _host_port(value: Any) -> HostPort:
    if isinstance(value, HostPort):
        return value
    expected = 'expected host:port, e.g. 127.0.0.1:9090, or in quotes "[::1]:9090"'
    if not isinstance(value, str):
        raise _invalid(f"got {show(value)} ({expected})")
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise _invalid(f"{value!r}: an IPv6 address needs brackets ({expected})")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _invalid(f"{value!r} is not host:port ({expected})")
    return HostPort(host=host, port=int(port))


class Http(_Section):
    listen: Annotated[HostPort, BeforeValidator(_host_port)] = HostPort(host="127.0.0.1", port=9090)


_SQLITE = "sqlite:///"
_POSTGRESQL = "postgresql://"


def _store_url(url: str) -> str:
    if any(url.startswith(scheme) and url != scheme for scheme in (_SQLITE, _POSTGRESQL)):
        return url
    raise _invalid(
        f"{url!r} is not a supported store (expected sqlite:///relative/path, "
        "sqlite:////absolute/path or postgresql://user:password@host/database)"
    )


class Store(_Section):
    url: Annotated[str, AfterValidator(_store_url)] = "sqlite:///var/softswitch.db"

    @property
    def sqlite_path(self) -> Path | None:
        """The database file for a SQLite store (the URL's path after three slashes)."""
        return Path(self.url.removeprefix(_SQLITE)) if self.url.startswith(_SQLITE) else None


class Log(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def _slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise _invalid(
            f"{value!r} is not a valid name (expected lowercase letters, digits, '-', '_')"
        )
    return value


def _domain(value: str) -> str:
    # SIP compares host names case-insensitively (RFC 3261 §19.1.4).
    if not _DOMAIN.fullmatch(value.lower()):
        raise _invalid(f"{value!r} is not a domain name (expected e.g. acme.example)")
    return value.lower()


def _int_to_str(value: Any) -> Any:
    # `extension: 101` is an int in YAML; the loader keeps `0101` as text, so this is lossless.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _digits(value: str) -> str:
    if not value.isascii() or not value.isdigit():
        raise _invalid(f"{value!r} is not an extension (expected digits only, e.g. '101')")
    return value


def _country(value: str) -> str:
    if value.upper() not in COUNTRIES:
        raise _invalid(f"{value!r} is not a country code (expected ISO 3166 alpha-2, e.g. RU, US)")
    return value.upper()


def _gateway_address(value: Any) -> HostPort:
    """``IP`` or ``IP:port`` (IPv6 in brackets to give a port); 5060 when no port is given."""
    if isinstance(value, HostPort):
        return value
    text = value if isinstance(value, str) else ""
    try:
        return HostPort(host=str(ip_address(text.strip("[]"))), port=5060)
    except ValueError:
        pass
    address = _host_port(value)
    try:
        return HostPort(host=str(ip_address(address.host)), port=address.port)
    except ValueError:
        raise _invalid(
            f"{value!r}: the host is not an IP address (expected e.g. 192.0.2.10:5060; "
            "gateways are matched by the address they send from, so no DNS names)"
        ) from None


class Gateway(_Section):
    """A trunk peer (carrier, SBC) known by its address: it needs no registration."""

    name: Annotated[str, AfterValidator(_slug)]
    address: Annotated[HostPort, BeforeValidator(_gateway_address)]
    transport: Literal["udp", "tcp", "tls"] = "udp"
    # TLS: the name its certificate carries, checked and sent as SNI (default: its address);
    # the CA file that signs it (default: the system's CAs); tls_verify false checks nothing.
    tls_name: str | None = Field(default=None, min_length=1)
    tls_ca: Path | None = None
    tls_verify: bool = True
    # other addresses it may send calls from (IP or network); matched by IP, any port
    sources: tuple[Annotated[IPv4Network | IPv6Network, BeforeValidator(_network)], ...] = ()
    # inbound: national numbers (no '+') are read in this country; without it, as E.164
    country: Annotated[str, AfterValidator(_country)] | None = None
    # outbound Request-URI user: tech_prefix + prefix + (the number in format)[strip:]
    format: Literal["+e164", "e164"] = "+e164"
    strip: NonNegativeInt = 0
    prefix: Annotated[str, BeforeValidator(_int_to_str)] = ""
    # the carrier's routing prefix: added to outbound numbers, removed from inbound ones
    tech_prefix: Annotated[str, BeforeValidator(_int_to_str)] = ""
    max_calls: NonNegativeInt = 0  # calls through it at once, both ways (0: no limit)

    @model_validator(mode="after")
    def _tls_options(self) -> Self:
        if self.transport != "tls":
            for name in ("tls_name", "tls_ca"):
                if getattr(self, name) is not None:
                    raise _invalid(f"{name} is only used with transport tls", at=(name,))
            if not self.tls_verify:
                raise _invalid("tls_verify is only used with transport tls", at=("tls_verify",))
        elif self.tls_ca is not None and not self.tls_ca.is_file():
            raise _invalid(
                f"no such file {str(self.tls_ca)!r} (expected the PEM CA certificates)",
                at=("tls_ca",),
            )
        return self

    def dial_string(self, e164: str) -> str:
        """The Request-URI user for an E.164 number sent through this gateway."""
        number = e164 if self.format == "+e164" else e164.removeprefix("+")
        return f"{self.tech_prefix}{self.prefix}{number[self.strip :]}"


class User(_Section):
    extension: Annotated[str, BeforeValidator(_int_to_str), AfterValidator(_digits)]
    password: Annotated[str, BeforeValidator(_int_to_str), Field(min_length=1)]
    # shown to the outside world on this user's outbound calls, instead of the tenant's
    caller_id: Annotated[str, BeforeValidator(_int_to_str)] | None = None
    # "" only when extension is missing too: _name_defaults_to_extension fills it otherwise.
    name: str = Field(default="", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_extension(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") is None and "extension" in data:
            return {**data, "name": _int_to_str(data["extension"])}
        return data


def _did_keys(value: Any) -> Any:
    # `"+74951234567": 101`: the loader keeps a signed number as text; other int keys too.
    return {_int_to_str(k): v for k, v in value.items()} if isinstance(value, dict) else value


def _number(text: str, country: str | None, at: Loc) -> str:
    number = to_e164(text, country)
    if number is None:
        how = f"national in {country} or " if country else ""
        raise _invalid(
            f"{text!r} is not a phone number (expected {how}E.164, e.g. '+74951234567')", at=at
        )
    return number


class AnswerHangup(_Section):
    """Answers, keeps the line open ``seconds``, hangs up: a line test (the caller's RTP is
    counted by the relay)."""

    handler: Literal["answer-hangup"]
    seconds: PositiveFloat = 5.0


class FollowMe(_Section):
    """Answers, rings ``extension`` for ``timeout`` seconds and connects the two; on no
    answer or busy, hangs up with that cause."""

    handler: Literal["follow-me"]
    extension: Annotated[str, BeforeValidator(_int_to_str), AfterValidator(_digits)]
    timeout: PositiveInt = 20
    record: bool = False  # a stereo WAV of the call (caller left), under media.recordings


Extension = Annotated[str, BeforeValidator(_int_to_str), AfterValidator(_digits)]


class PlayPrompts(_Section):
    """Answers, plays ``play`` (prompt names of ``language``, or WAV paths) and hangs up."""

    handler: Literal["prompt"]
    play: list[str] = Field(default_factory=lambda: ["greeting", "goodbye"], min_length=1)
    language: Literal["en", "ru"] | None = None  # None: media.language


class Menu(_Section):
    """Answers, plays ``prompt`` and takes a choice of ``digits`` keys (RFC 4733, SIP INFO or
    tones); a choice in ``choices`` rings that extension and connects it; a wrong or missing
    choice is said so and asked again, ``tries`` times in all, then goodbye."""

    handler: Literal["menu"]
    prompt: str = "greeting"
    choices: dict[Annotated[str, BeforeValidator(_int_to_str)], Extension] = Field(min_length=1)
    digits: PositiveInt = 1
    timeout: PositiveFloat = 5.0  # seconds to wait for the first key after the prompt
    tries: PositiveInt = 3
    ring: PositiveInt = 20  # seconds the chosen extension rings
    language: Literal["en", "ru"] | None = None
    record: bool = False


class Voicemail(_Section):
    """Answers, plays the voicemail prompt and a beep, and records the caller (until ``#``,
    ``silence`` seconds of quiet or ``max_seconds``) into voicemail/<extension>/."""

    handler: Literal["voicemail"]
    extension: Extension
    max_seconds: PositiveInt = 120
    silence: PositiveFloat = 5.0
    language: Literal["en", "ru"] | None = None


class Supervise(_Section):
    """Answers, beeps and takes an extension by keys (ended by ``#``), then joins the call
    that extension is on in ``mode``: ``listen`` (hears both, heard by nobody), ``whisper``
    (heard by that extension only), ``barge`` (heard by both). Only calls the switch bridges
    can be joined (follow-me, menu): once a tenant has a supervise route, they are bridged
    in the media engine's mixer."""

    handler: Literal["supervise"]
    mode: Literal["listen", "whisper", "barge"] = "listen"
    digits: PositiveInt = 6  # at most this many keys
    timeout: PositiveFloat = 10.0  # seconds to wait for the first key
    language: Literal["en", "ru"] | None = None


# A number the switch answers itself, by the built-in call handler named in `handler`
# (switch/b2bua/handlers.py) -- until dialplans (dialplans/) route numbers to flows.
Route = Annotated[
    AnswerHangup | FollowMe | PlayPrompts | Menu | Voicemail | Supervise,
    Field(discriminator="handler"),
]


class Tenant(_Section):
    name: Annotated[str, AfterValidator(_slug)]
    domain: Annotated[str, AfterValidator(_domain)]
    # where national numbers are dialled and written (ISO 3166 alpha-2)
    country: Annotated[str, AfterValidator(_country)] | None = None
    # outbound calls to numbers that are not extensions, in this order (the next on failure)
    gateways: tuple[str, ...] = ()
    # the number shown on outbound calls; default: the first DID
    caller_id: Annotated[str, BeforeValidator(_int_to_str)] | None = None
    # company numbers and the extension each one rings
    dids: Annotated[
        dict[str, Annotated[str, BeforeValidator(_int_to_str)]], BeforeValidator(_did_keys)
    ] = Field(default_factory=dict)
    users: tuple[User, ...] = ()
    # short numbers the switch answers itself, each with its call handler
    routes: Annotated[
        dict[Annotated[str, AfterValidator(_digits)], Route], BeforeValidator(_did_keys)
    ] = Field(default_factory=dict)
    _by_extension: dict[str, User] = PrivateAttr(default_factory=dict)
    _dids: dict[str, str] = PrivateAttr(default_factory=dict)  # E.164 -> extension
    _caller_ids: dict[str, str] = PrivateAttr(default_factory=dict)  # extension -> E.164

    @model_validator(mode="after")
    def _index_users(self) -> Self:
        for i, user in enumerate(self.users):
            if user.extension in self._by_extension:
                raise _invalid(
                    f"duplicate extension {user.extension!r} in tenant {self.name!r}",
                    at=("users", i, "extension"),
                )
            self._by_extension[user.extension] = user
        for number, route in self.routes.items():
            if number in self._by_extension:
                raise _invalid(
                    f"route {number!r} is also an extension (expected a number of its own)",
                    at=("routes", number),
                )
            rung: list[tuple[str, Loc]] = []
            if isinstance(route, FollowMe | Voicemail):
                rung.append((route.extension, ("routes", number, "extension")))
            elif isinstance(route, Menu):
                rung.extend((e, ("routes", number, "choices", k)) for k, e in route.choices.items())
            for extension, at in rung:
                if extension not in self._by_extension:
                    known = ", ".join(self._by_extension) or "none"
                    raise _invalid(
                        f"{route.handler} names unknown extension {extension!r} (known: {known})",
                        at=at,
                    )
        return self

    @model_validator(mode="after")
    def _index_numbers(self) -> Self:
        for text, extension in self.dids.items():
            number = _number(text, self.country, ("dids", text))
            if extension not in self._by_extension and extension not in self.routes:
                known = ", ".join([*self._by_extension, *self.routes]) or "none"
                raise _invalid(
                    f"DID {text!r} rings unknown extension {extension!r} (known: {known})",
                    at=("dids", text),
                )
            if number in self._dids:
                raise _invalid(f"DID {text!r} is listed twice (as {number})", at=("dids", text))
            self._dids[number] = extension
        default = next(iter(self._dids), None)
        if self.caller_id is not None:
            default = _number(self.caller_id, self.country, ("caller_id",))
        for i, user in enumerate(self.users):
            if user.caller_id is not None:
                at = ("users", i, "caller_id")
                self._caller_ids[user.extension] = _number(user.caller_id, self.country, at)
            elif default is not None:
                self._caller_ids[user.extension] = default
        return self

    def user(self, extension: str) -> User | None:
        return self._by_extension.get(extension)

    @property
    def supervised(self) -> bool:
        """Whether a supervisor may join this tenant's calls (it has a supervise route)."""
        return any(isinstance(route, Supervise) for route in self.routes.values())

    @property
    def numbers(self) -> dict[str, str]:
        """The tenant's DIDs in E.164, each with the extension it rings."""
        return self._dids

    def caller_id_of(self, extension: str) -> str | None:
        """The E.164 number ``extension`` calls out as; None: none configured (anonymous)."""
        return self._caller_ids.get(extension)


class Config(_Section):
    sip: Sip = Sip()
    registrar: Registrar = Registrar()
    calls: Calls = Calls()
    media: Media = Media()
    security: Security = Security()
    http: Http = Http()
    store: Store = Store()
    log: Log = Log()
    gateways: tuple[Gateway, ...] = ()
    tenants: tuple[Tenant, ...] = Field(min_length=1)
    _by_domain: dict[str, Tenant] = PrivateAttr(default_factory=dict)
    _gateways: dict[str, Gateway] = PrivateAttr(default_factory=dict)
    _by_did: dict[str, Tenant] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _index_tenants(self) -> Self:
        names: set[str] = set()
        for i, tenant in enumerate(self.tenants):
            if tenant.name in names:
                raise _invalid(f"duplicate tenant name {tenant.name!r}", at=("tenants", i, "name"))
            if tenant.domain in self._by_domain:
                raise _invalid(
                    f"domain {tenant.domain!r} already belongs to tenant "
                    f"{self._by_domain[tenant.domain].name!r}",
                    at=("tenants", i, "domain"),
                )
            names.add(tenant.name)
            self._by_domain[tenant.domain] = tenant
        return self

    @model_validator(mode="after")
    def _index_gateways(self) -> Self:
        addresses: dict[tuple[str, str, int], str] = {}
        for i, gateway in enumerate(self.gateways):
            if gateway.name in self._gateways:
                raise _invalid(
                    f"duplicate gateway name {gateway.name!r}", at=("gateways", i, "name")
                )
            address = gateway.address
            key = (gateway.transport, address.host, address.port)
            if key in addresses:
                raise _invalid(
                    f"{address.host}:{address.port} is also gateway {addresses[key]!r} "
                    "(expected one gateway per address: calls are matched by it)",
                    at=("gateways", i, "address"),
                )
            addresses[key] = gateway.name
            self._gateways[gateway.name] = gateway
        for i, tenant in enumerate(self.tenants):
            for j, name in enumerate(tenant.gateways):
                if name not in self._gateways:
                    known = ", ".join(self._gateways) or "none configured"
                    raise _invalid(
                        f"unknown gateway {name!r} (known: {known})",
                        at=("tenants", i, "gateways", j),
                    )
            for text, number in zip(tenant.dids, tenant.numbers, strict=True):
                owner = self._by_did.setdefault(number, tenant)
                if owner is not tenant:
                    shown = text if text == number else f"{text} ({number})"
                    raise _invalid(
                        f"DID {shown!r} already belongs to tenant {owner.name!r}",
                        at=("tenants", i, "dids", text),
                    )
        return self

    @model_validator(mode="after")
    def _routes_need_the_relay(self) -> Self:
        for i, tenant in enumerate(self.tenants):
            if tenant.routes and not self.media.relay:
                raise _invalid(
                    "routes need media.relay: true (the switch answers them with its own media)",
                    at=("tenants", i, "routes"),
                )
        return self

    @model_validator(mode="after")
    def _prompts_exist(self) -> Self:
        """Every prompt a route plays is in the prompt set (or is a WAV file that exists)."""
        prompts = Prompts(self.media.prompts)
        for i, tenant in enumerate(self.tenants):
            for number, route in tenant.routes.items():
                lang = getattr(route, "language", None) or self.media.language
                named: list[tuple[str, Loc]]
                if isinstance(route, PlayPrompts):
                    named = [(p, ("tenants", i, "routes", number, "play", k))
                             for k, p in enumerate(route.play)]  # fmt: skip
                elif isinstance(route, Menu):
                    at: Loc = ("tenants", i, "routes", number)
                    named = [(route.prompt, (*at, "prompt"))] + [
                        (name, at) for name in ("menu-invalid", "menu-timeout", "goodbye")
                    ]
                elif isinstance(route, Voicemail):
                    named = [(n, ("tenants", i, "routes", number)) for n in ("voicemail", "beep")]
                else:
                    continue
                known = prompts.names(lang) if lang in prompts.languages() else []
                for name, at in named:
                    if name.endswith(".wav") or "/" in name:
                        if not Path(name).is_file():
                            raise _invalid(f"no WAV file {name!r}", at=at)
                    elif name not in known:
                        close = difflib.get_close_matches(name, known, 3)
                        hint = f" (did you mean {', '.join(close)}?)" if close else ""
                        raise _invalid(f"no prompt {name!r} in language {lang!r}{hint}", at=at)
        return self

    def tenant_by_domain(self, domain: str) -> Tenant | None:
        return self._by_domain.get(domain.lower())

    def gateway(self, name: str) -> Gateway:
        return self._gateways[name]

    def tenant_by_did(self, number: str) -> Tenant | None:
        """The tenant owning the E.164 ``number``."""
        return self._by_did.get(number)

    def gateway_at(self, transport: str, host: str, port: int) -> Gateway | None:
        """The gateway a request from ``host:port`` comes from: by address, never by header.

        Over UDP the source port must be the gateway's port too; a TCP connection comes
        from a port of the peer's choosing, so there the address alone decides. Extra
        ``sources`` match by address.
        """
        source = _source_ip(host)
        if source is None:
            return None
        for gateway in self.gateways:
            address = gateway.address
            same_port = transport != "udp" or address.port == port
            if gateway.transport == transport and ip_address(address.host) == source and same_port:
                return gateway
        for gateway in self.gateways:
            if any(source in network for network in gateway.sources):
                return gateway
        return None


# pydantic puts the tag of a route's handler into the location of its errors; the YAML has
# no such key (routes.500.follow-me.timeout is routes.500.timeout).
_ROUTE_TAGS = frozenset(get_args(m.model_fields["handler"].annotation)[0]
                        for m in get_args(get_args(Route)[0]))  # fmt: skip


def load_config(path: Path) -> Config:
    """Read and validate the daemon configuration; raise ConfigError listing every problem."""
    root, data = read_yaml(path)
    problems = duplicate_keys(path, root, (), set()) if root is not None else []
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += validation_problems(path, root, exc, Config, _ERROR_TYPE, _ROUTE_TAGS)
    if problems:
        raise ConfigError(sorted(problems, key=lambda problem: problem.line or 0))
    return config
