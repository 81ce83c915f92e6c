"""The softswitch daemon: wires configuration, store, SIP stack and HTTP together.

SIGTERM/SIGINT drain: new requests get 503, transactions in flight finish
(bounded), pending binding writes are flushed, then the process exits 0.
SIGHUP re-reads the configuration; a file that fails validation is refused
whole and the running configuration stays. Listening addresses and the
store are fixed at start; a change to them is logged as needing a restart.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from media import MediaTimeout, Relay, RelayLike
from media.api import EngineLike
from media.engine import MediaEngine
from media.metrics import EngineCollector, RelayCollector
from media.prompts import Prompts
from media.worker_engine import EngineSettings
from media.workers import RelayPool
from switch.b2bua.service import B2bua
from switch.ban import BanList
from switch.cdr import CallRecorder
from switch.config import Config, ConfigError, load_config
from switch.endpoint import SipEndpoint
from switch.location import LocationService
from switch.logs import configure
from switch.metrics import Metrics
from switch.migrations import SchemaError
from switch.registrar import Registrar
from switch.sip.digest import NonceManager
from switch.store import Store, open_store
from switch.systemd import Notifier
from switch.transport import ClientTls, client_tls_context, tls_context

log = structlog.get_logger()

# A young collection every 20,000 net allocations instead of Python's 700: a call allocates
# thousands of short-lived objects (parsed messages, transactions), and at 700 the collector
# ran ~70 times a second at 400 calls/s, each pass walking the young calls still alive.
GC_THRESHOLDS: Final = (20_000, 10, 10)

DRAIN_SECONDS = 5.0
HOUSEKEEPING_SECONDS = 1.0


class Daemon:
    def __init__(self, config_path: Path, config: Config, notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.notifier = Notifier({}) if notifier is None else notifier
        self.metrics = Metrics()
        self.stopping = asyncio.Event()
        self.store: Store | None = None
        self.location: LocationService | None = None
        self.records: CallRecorder | None = None
        self.endpoint: SipEndpoint | None = None
        self.registrar: Registrar | None = None
        self.b2bua: B2bua | None = None
        self.relay: RelayLike | None = None
        self.engine: EngineLike | None = None
        self.http: web.AppRunner | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.config
        self.store = await open_store(config.store.url)
        self.records = CallRecorder(self.store, self.metrics)
        crashed = await self.records.recover()
        if crashed:
            log.warning("calls of the last run marked crashed", calls=crashed)
        self.location = LocationService(self.store)
        loaded = await self.location.load(time.time())
        self.location.start()
        ban = config.security.ban
        bans = BanList(ban.failures, ban.window, ban.duration, ban.whitelist)
        nonces = NonceManager(ttl=config.security.nonce_ttl)
        self.registrar = Registrar(config, self.location, nonces, bans, self.metrics)
        self.endpoint = SipEndpoint(self.metrics, bans, config.sip.user_agent)
        transports = self.endpoint.transports
        self.endpoint.handlers["REGISTER"] = self.registrar.handle
        self.endpoint.public_address = config.sip.public_address
        self.endpoint.t1 = config.sip.t1
        transports.client_tls = gateway_tls(config)
        self.b2bua = B2bua(config, self.endpoint, self.location, self.registrar, self.metrics)
        self.b2bua.recorder = self.records
        if config.media.relay:
            self.relay, self.engine = await self._start_media()
            self.b2bua.media = self.b2bua.relay_media(self.relay)
            self.b2bua.relay = self.relay
            self.b2bua.engine = self.engine
            self.metrics.registry.register(EngineCollector(self.engine))
            # RTP counters are read from the relay at scrape time, live calls included.
            self.metrics.registry.register(RelayCollector(self.relay))
        self.b2bua.attach()
        for spec in config.sip.listen:
            if spec.transport == "udp":
                listener = await transports.listen_udp(
                    spec.address, spec.port, config.sip.udp_buffer
                )
            else:
                tls = None
                if spec.transport == "tls":
                    assert spec.cert is not None and spec.key is not None
                    tls = tls_context(str(spec.cert), str(spec.key))
                listener = await transports.listen_stream(spec.address, spec.port, tls)
            log.info(
                "listening", transport=listener.transport, host=listener.host, port=listener.port
            )
        await self._start_http()
        self._refresh_gauges()
        self._housekeeping = asyncio.create_task(self._housekeep())
        # What start-up built lives as long as the process: keep it out of every
        # collection, so full collections only walk objects of calls and requests.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        log.info("started", config=str(self.config_path), bindings=loaded)
        self.notifier.ready(f"running: {len(config.sip.listen)} SIP listeners, {loaded} bindings")
        self._watchdog = asyncio.create_task(self.notifier.watchdog())

    async def _start_media(self) -> tuple[RelayLike, EngineLike]:
        """The relay and the media engine: in this process, or in media workers."""
        media = self.config.media
        if not media.workers:
            relay = Relay(media.relay_config(), on_timeout=self._on_media_timeout)
            engine = MediaEngine(
                relay.local_host,
                prompts=Prompts(media.prompts) if media.prompts else None,
                language=media.language,
                recordings=media.recordings,
            )
            return relay, engine
        log_config = self.config.log

        def command(fd: int, relay_config: str, name: str) -> list[str]:
            options = ["--log-level", log_config.level, "--log-format", log_config.format]
            return [sys.executable, "-m", "switch.cli", "media-worker", str(fd), relay_config,
                    name, *options]  # fmt: skip

        relay_config = media.relay_config()
        settings = EngineSettings(
            host=relay_config.local_host,
            prompts=None if media.prompts is None else str(media.prompts.resolve()),
            language=media.language,
            recordings=str(media.recordings.resolve()),
        )
        pool = RelayPool(relay_config, media.workers, on_timeout=self._on_media_timeout,
                         command=command, engine=settings)  # fmt: skip
        try:
            await pool.started()
        except OSError:
            pool.close()
            await pool.wait_closed()
            raise
        assert self.records is not None and pool.engine is not None
        self.records.settle = pool.settle
        log.info("media workers running", workers=media.workers)
        return pool, pool.engine

    def _on_media_timeout(self, event: MediaTimeout) -> None:
        assert self.b2bua is not None and self.records is not None
        self.records.media_timeout(event.call_id)
        self.b2bua.on_media_timeout(event)

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self.http = web.AppRunner(app, access_log=None)
        await self.http.setup()
        listen = self.config.http.listen
        await web.TCPSite(self.http, listen.host, listen.port).start()
        log.info("http listening", host=listen.host, port=listen.port)

    async def _metrics(self, request: web.Request) -> web.Response:
        self._refresh_gauges()
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _refresh_gauges(self) -> None:
        assert self.location is not None
        counts = self.location.counts_by_tenant()
        for tenant in self.config.tenants:
            self.metrics.registrations.labels(tenant.name).set(counts.get(tenant.name, 0))

    async def _housekeep(self) -> None:
        assert self.location is not None and self.endpoint is not None
        assert self.records is not None
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            now = time.time()
            try:
                for binding in await self.location.expire(now):
                    log.info("binding expired", tenant=binding.tenant, user=binding.user)
            except Exception:
                log.exception("expiring bindings failed")
            try:
                await self.records.heartbeat()
            except Exception:
                log.exception("call records heartbeat failed")
            self.endpoint.housekeep()
            for ip in self.endpoint.bans.expire(now):
                log.info("source unblocked", source=ip)
            self.metrics.banned_sources.set(self.endpoint.bans.banned_count)
            self._refresh_gauges()

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration", problems=str(exc))
            self.notifier.ready("running: the last reload was refused, see the log")
            return
        fixed = ("sip", "http", "store", "media")
        changed = [name for name in fixed if getattr(config, name) != getattr(self.config, name)]
        if changed:
            log.warning("reload: these sections need a restart to apply", sections=changed)
        self.config = config
        assert self.registrar is not None
        self.registrar.config = config
        if self.b2bua is not None:
            self.b2bua.config = config
        if self.endpoint is not None:
            self.endpoint.transports.client_tls = gateway_tls(config)
        ban = config.security.ban
        bans = self.registrar.bans
        bans.failures, bans.window, bans.duration = ban.failures, ban.window, ban.duration
        bans.whitelist = tuple(ban.whitelist)
        self.registrar.nonces.ttl = config.security.nonce_ttl
        self._refresh_gauges()
        users = sum(len(t.users) for t in config.tenants)
        log.info("reloaded", tenants=len(config.tenants), users=users)
        self.notifier.ready(f"running: reloaded, {len(config.tenants)} tenants, {users} users")

    async def stop(self) -> None:
        log.info("draining")
        self.notifier.stopping("draining: new requests get 503, calls are ended")
        if self.endpoint is not None:
            await self.endpoint.drain(DRAIN_SECONDS)
        if self.b2bua is not None:
            await self.b2bua.stop()  # BYE to the calls it handles, while transports are open
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self.http is not None:
            await self.http.cleanup()
        if self.endpoint is not None:
            await self.endpoint.transports.close()
        if self.engine is not None:
            self.engine.close()
        if self.records is not None:
            await self.records.close()  # before the relay: media workers send the last counters
        if self.relay is not None:
            self.relay.close()
            if isinstance(self.relay, RelayPool):
                await self.relay.wait_closed()
        if self.location is not None:
            await self.location.close()
        if self.store is not None:
            await self.store.close()
        if self._watchdog is not None:  # fed while draining: a drain that hangs is a hang
            self._watchdog.cancel()
        log.info("stopped")


def gateway_tls(config: Config) -> dict[tuple[str, int], ClientTls]:
    """How TLS connections to each TLS gateway are opened and checked."""
    return {
        (gw.address.host, gw.address.port): ClientTls(
            client_tls_context(str(gw.tls_ca) if gw.tls_ca else None, gw.tls_verify),
            gw.tls_name or gw.address.host,
        )
        for gw in config.gateways
        if gw.transport == "tls"
    }


async def _main(path: Path, config: Config) -> int:
    daemon = Daemon(path, config, Notifier.from_environment())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.stopping.set)
    loop.add_signal_handler(signal.SIGINT, daemon.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.start()
    except (OSError, SchemaError) as exc:
        log.error("cannot start", error=str(exc))
        daemon.notifier.notify(STATUS=f"cannot start: {exc}")
        await daemon.stop()
        return 1
    await daemon.stopping.wait()
    await daemon.stop()
    return 0


def run(path: Path, config: Config) -> int:
    configure(config.log.level, config.log.format)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_main(path, config))
    return uvloop.run(_main(path, config))
