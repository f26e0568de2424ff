"""``python -m web``: wiring of the live model (MQTT), the catalog, the store and uvicorn.

paho's network thread hands each message to the event loop
(``call_soon_threadsafe``); the live model is only touched on the loop. The web service
publishes its own retained ``svc/<account>/status`` with a last will, like every service,
and commands with QoS 1, answering the form once the broker acknowledged them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import structlog
import uvicorn
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from catalog import SqlCatalog, open_catalog
from catalog.signing import load_public_key
from config.settings import WebSettings
from contract.topics import service_status_topic
from mqttclient import make_client, publish_json, wait_published
from objstore import ObjectStore, open_store
from web.app import WebContext, create_app
from web.auth import Sessions
from web.live import LiveModel
from web.users import UsersFile, load_or_create_secret

log = structlog.get_logger("web")

PUBLISH_TIMEOUT_S = 10.0


def now_ms() -> int:
    """Wall clock in Unix milliseconds."""
    return time.time_ns() // 1_000_000


class WebService:
    """The running web service."""

    def __init__(self, settings: WebSettings) -> None:
        """Open the catalog, the store and the users file; nothing is served yet."""
        self.settings = settings
        self.account = settings.mqtt.username or "operator-web"
        self.catalog: SqlCatalog = open_catalog(settings.catalog)
        self.store: ObjectStore | None = (
            open_store(settings.store) if settings.store.backend == "s3" else None)
        h = settings.http
        # The encoder writes the public key beside its signing key; until it has run
        # once the file may be missing, and the page then shows no tamper check.
        public_key = (load_public_key(h.video_public_key_file.read_bytes())
                      if h.video_public_key_file is not None
                      and h.video_public_key_file.is_file() else None)
        self.live = LiveModel(settings.mqtt.topic_prefix, settings.alert_prefix,
                              max_devices=settings.live.max_devices,
                              max_services=settings.live.max_services,
                              max_alerts=settings.live.max_alerts,
                              history=settings.live.history)
        self.ctx = WebContext(
            settings=settings, live=self.live, catalog=self.catalog,
            users=UsersFile(h.users_file),
            sessions=Sessions(load_or_create_secret(h.session_secret_file),
                              h.session_max_age_s),
            store=self.store, public_key=public_key, publish=self.publish)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client: mqtt.Client | None = None
        self.server: uvicorn.Server | None = None

    # -- MQTT ---------------------------------------------------------------------

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: mqtt.ConnectFlags, rc: ReasonCode,
                    _p: Properties | None) -> None:
        if rc.is_failure:
            log.warning("web_mqtt_refused", reason=str(rc))
            return
        for topic in self.live.topics():
            c.subscribe(topic, qos=1)
        publish_json(c, service_status_topic(self.account), {"state": "online"}, retain=True)
        log.info("web_mqtt_connected")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._apply, msg.topic, bytes(msg.payload),
                                          now_ms())

    def _apply(self, topic: str, payload: bytes, at_ms: int) -> None:
        change = self.live.apply(topic, payload, at_ms)
        if change is None:
            return
        self.ctx.broadcaster.publish(change)
        if change.get("type") == "alert":
            card = self.live.device_changes_for_alert(str(change.get("subject")))
            if card is not None:
                self.ctx.broadcaster.publish(card)

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish a command with QoS 1; whether the broker acknowledged it in time."""
        if self.client is None:
            return False
        info = self.client.publish(topic, payload, qos=1)
        return wait_published(info, PUBLISH_TIMEOUT_S)

    def _start_mqtt(self) -> None:
        m = self.settings.mqtt
        # Every topic we read is retained: no session to keep (3.1.1: clean session).
        client = make_client(m, client_id=m.client_id or self.account,
                             will_topic=service_status_topic(self.account), clean_session=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self.client = client
        # Retry in the background until the broker listens (start order does not matter).
        if m.protocol == "3.1.1":
            # paho refuses clean_start on 3.1.1: the client's clean-session flag decides.
            client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        else:
            client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=True)
        client.loop_start()

    def _stop_mqtt(self) -> None:
        c = self.client
        if c is None:
            return
        with contextlib.suppress(Exception):
            info = publish_json(c, service_status_topic(self.account), {"state": "offline"},
                                retain=True)
            wait_published(info, 2.0)
        c.disconnect()
        c.loop_stop()

    # -- HTTP ---------------------------------------------------------------------

    async def serve(self) -> int:
        """Serve until SIGTERM/SIGINT (uvicorn's handlers); 0 after a clean stop."""
        self.loop = asyncio.get_running_loop()
        h = self.settings.http
        config = uvicorn.Config(
            create_app(self.ctx), host=h.host, port=h.port, log_config=None, access_log=False,
            lifespan="off", proxy_headers=False, server_header=False,
            ssl_certfile=str(h.tls_cert_file) if h.tls_cert_file else None,
            ssl_keyfile=str(h.tls_key_file) if h.tls_key_file else None,
            limit_concurrency=1000, timeout_graceful_shutdown=3)
        self.server = _Server(config)
        self._start_mqtt()
        announce = asyncio.create_task(self._announce())
        try:
            await self.server.serve()
        finally:
            announce.cancel()
            self._stop_mqtt()
            self.catalog.close()
            if self.store is not None:
                self.store.close()
        log.info("web_stopped")
        return 0

    async def _announce(self) -> None:
        server = self.server
        assert server is not None
        while not server.started:
            await asyncio.sleep(0.05)
        h = self.settings.http
        port = h.port
        with contextlib.suppress(Exception):
            port = server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if h.tls_cert_file else "http"
        host = "localhost" if h.host in ("127.0.0.1", "0.0.0.0", "::") else h.host
        log.info("web_ready", url=f"{scheme}://{host}:{port}/", port=port,
                 catalog=self.catalog.backend)


class _Server(uvicorn.Server):
    """uvicorn's server, but a SIGTERM/SIGINT stop ends the process with exit code 0.

    uvicorn re-raises the captured signal after its graceful shutdown, so the process
    dies "terminated by SIGTERM"; like every other camstack service (and for the
    supervisor, which tells a clean stop by the exit code), the web stops with 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
