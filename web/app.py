"""The Starlette application: routes, access control, pages, media and live events.

Nothing but ``/healthz``, the login form and its stylesheet answers without a session.
Every form carries a CSRF token bound to the session; POSTs also need a same-origin
``Origin`` when the browser sends one. Path parameters are device ids and batch names
checked with the contract's rules; files are found through the catalog and
:mod:`web.media`, never from a path in the request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from catalog import CatalogError, SqlCatalog, VideoRow
from catalog.signing import verify_video
from config.settings import WebSettings
from contract.events import safe_text
from contract.ids import is_device_id, is_safe_name
from contract.topics import cmd_topic
from objstore import ObjectStore
from web.auth import LOGIN_COOKIE, SESSION_COOKIE, RateLimiter, Session, Sessions
from web.commands import FRAME_SIZES, CommandError, set_command
from web.events import Broadcaster
from web.live import LiveModel
from web.media import Where, locate, thumbnail_key
from web.users import MAX_PASSWORD, USERNAME_RE, UsersError, UsersFile

log = structlog.get_logger("web")

HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 16 * 1024
MAX_QUERY = 2048
DAY_MS = 86_400_000
TIMELINE_DAYS = 14
MAX_DAY_VIDEOS = 2000
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}


@dataclass
class WebContext:
    """Everything the routes use, built once by the service (or a test)."""

    settings: WebSettings
    live: LiveModel
    catalog: SqlCatalog
    users: UsersFile
    sessions: Sessions
    store: ObjectStore | None = None
    public_key: Ed25519PublicKey | None = None
    publish: Callable[[str, bytes], bool] | None = None
    """Send a command (QoS 1); True once the broker acknowledged it."""
    broadcaster: Broadcaster = field(init=False)
    ip_limiter: RateLimiter = field(init=False)
    user_limiter: RateLimiter = field(init=False)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        h = self.settings.http
        self.broadcaster = Broadcaster(h.max_event_clients)
        self.ip_limiter = RateLimiter(h.login_max_failures, h.login_window_s)
        self.user_limiter = RateLimiter(h.login_max_failures, h.login_window_s)

    @property
    def tls(self) -> bool:
        """Whether the page is served over HTTPS."""
        return self.settings.http.tls_cert_file is not None


class Redirect(Exception):  # noqa: N818 - control flow, not an error
    """Answer with a redirect (to the login form)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


# --------------------------------------------------------------------------- helpers


def fmt_ts(ms: object) -> str:
    """UTC time of a Unix-ms value, or an em dash."""
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 < ms < 2**53:
        return "—"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_age(ms: object, now_ms: float | None = None) -> str:
    """How long ago, compactly (``12s``, ``5m``, ``3h``, ``2d``)."""
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 < ms < 2**53:
        return "—"
    s = max(0, ((now_ms or time.time() * 1000) - ms) / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


def fmt_bytes(n: object) -> str:
    """Human bytes."""
    if not isinstance(n, int | float) or isinstance(n, bool) or not math.isfinite(n):
        return "—"
    v = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(v) < 1000:
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return f"{v:.1f} TB"


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["ts"] = fmt_ts
    env.filters["age"] = fmt_age
    env.filters["bytes"] = fmt_bytes
    env.filters["text"] = safe_text
    return env


def _day_start(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def _day_of(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "?"


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded body of at most 16 KiB, one value per name (the first).

    Raises:
        HTTPException: 413 when larger, 415 when not urlencoded, 400 when undecodable.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise HTTPException(415, "forms are application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                       max_num_fields=32, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "undecodable form") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _query(request: Request, name: str, limit: int = 200) -> str:
    value = request.query_params.get(name, "")
    return value if len(value) <= limit and value.isprintable() else ""


class SecurityHeaders:
    """Adds the security headers (and the CSP) to every response; refuses huge URLs."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.csp = csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request through the wrapped app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) > 8192:
            await PlainTextResponse("URI too long", 414)(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for k, v in {**SECURITY_HEADERS, "content-security-policy": self.csp}.items():
                    if k.encode() not in names:
                        headers.append((k.encode(), v.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --------------------------------------------------------------------------- the app


def create_app(ctx: WebContext) -> ASGIApp:
    """The ASGI application over ``ctx``."""
    env = _env()
    secure = ctx.tls
    h = ctx.settings.http
    where = Where(ctx.settings.storage.root, ctx.settings.store.backend,
                  ctx.settings.store.root, ctx.store, h.presign_expires_s)

    def render(request: Request, name: str, session: Session | None, status: int = 200,
               **values: Any) -> HTMLResponse:
        tpl = env.get_template(name)
        csrf = ctx.sessions.csrf_token(session.sid) if session else values.pop("csrf", "")
        html = tpl.render(user=session.user if session else None,
                          role=session.role if session else None, csrf=csrf,
                          live_seq=ctx.live.seq,
                          path=request.url.path, now_ms=int(time.time() * 1000),
                          frame_sizes=FRAME_SIZES, **values)
        return HTMLResponse(html, status, headers={"cache-control": "no-store"})

    def session_of(request: Request) -> Session | None:
        s = ctx.sessions.check(request.cookies.get(SESSION_COOKIE))
        if s is None:
            return None
        try:
            user = ctx.users.get(s.user)
        except UsersError:
            return None
        if user is None or user.role != s.role:
            return None
        return s

    def require(request: Request, role: str | None = None) -> Session:
        s = session_of(request)
        if s is None:
            nxt = request.url.path if request.method == "GET" else "/"
            raise Redirect("/login?next=" + urllib.parse.quote(nxt, safe="/"))
        if role is not None and s.role != role:
            raise HTTPException(403, "this needs the operator role")
        return s

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:  # not a browser form, or an old browser: CSRF token decides
            return True
        host = request.headers.get("host", "")
        return origin in (f"https://{host}", f"http://{host}")

    async def checked_form(request: Request, sid: str) -> dict[str, str]:
        if not same_origin(request):
            raise HTTPException(403, "cross-origin form")
        form = await read_form(request)
        if not ctx.sessions.csrf_ok(sid, form.get("csrf")):
            raise HTTPException(403, "missing or wrong CSRF token")
        return form

    # -- public -------------------------------------------------------------------

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def stylesheet(request: Request) -> Response:
        return FileResponse(HERE / "static" / "style.css", media_type="text/css")

    async def login_form(request: Request, error: str = "", status: int = 200) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not (0 < len(nonce) <= 64 and nonce.isalnum()):
            import secrets  # noqa: PLC0415

            nonce = secrets.token_hex(16)
        nxt = _query(request, "next")
        resp = render(request, "login.html", None, status, error=error,
                      next=nxt if nxt.startswith("/") and not nxt.startswith("//") else "/",
                      csrf=ctx.sessions.csrf_token("login:" + nonce))
        resp.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, httponly=True, secure=secure,
                        samesite="strict", path="/login")
        return resp

    async def login_get(request: Request) -> Response:
        if session_of(request) is not None:
            return RedirectResponse("/cameras", 303)
        return await login_form(request)

    async def login_post(request: Request) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not same_origin(request):
            raise HTTPException(403, "cross-origin form")
        form = await read_form(request)
        if not (0 < len(nonce) <= 64) or not ctx.sessions.csrf_ok("login:" + nonce,
                                                                   form.get("csrf")):
            raise HTTPException(403, "missing or wrong CSRF token")
        name, password = form.get("username", ""), form.get("password", "")
        ip = _client_ip(request)
        account = name if USERNAME_RE.fullmatch(name) else "?"
        wait = max(ctx.ip_limiter.retry_after(ip), ctx.user_limiter.retry_after(account))
        if wait > 0:
            log.warning("web_login_limited", ip=ip, user=safe_text(name, 64))
            resp = await login_form(request, "Too many failed logins; try again later.", 429)
            resp.headers["retry-after"] = str(math.ceil(wait))
            return resp
        user = None
        if len(password) <= MAX_PASSWORD:
            try:
                user = await anyio.to_thread.run_sync(ctx.users.authenticate, name, password)
            except UsersError as e:
                log.error("web_users_file", error=str(e))
        if user is None:
            ctx.ip_limiter.fail(ip)
            ctx.user_limiter.fail(account)
            log.info("web_login_failed", ip=ip, user=safe_text(name, 64))
            return await login_form(request, "Wrong user name or password.", 401)
        ctx.user_limiter.reset(account)
        cookie, _ = ctx.sessions.issue(user.name, user.role)
        nxt = form.get("next", "/")
        if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt or len(nxt) > 200:
            nxt = "/"
        resp = RedirectResponse(nxt, 303)
        resp.set_cookie(SESSION_COOKIE, cookie, max_age=h.session_max_age_s, httponly=True,
                        secure=secure, samesite="strict", path="/")
        resp.delete_cookie(LOGIN_COOKIE, path="/login")
        log.info("web_login", ip=ip, user=user.name, role=user.role)
        return resp

    async def logout(request: Request) -> Response:
        s = require(request)
        await checked_form(request, s.sid)
        ctx.sessions.revoke(s)
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # -- pages ----------------------------------------------------------------------

    async def home(request: Request) -> Response:
        require(request)
        return RedirectResponse("/cameras", 303)

    async def cameras(request: Request) -> Response:
        s = require(request)
        q = _query(request, "q", 64)
        state = _query(request, "state", 32)
        sick = _query(request, "sick", 5) == "1"
        try:
            page = max(1, min(int(_query(request, "page", 6) or "1"), 100_000))
        except ValueError:
            page = 1
        devices = ctx.live.select(query=q, state=state, sick=sick)
        pages = max(1, math.ceil(len(devices) / h.page_size))
        page = min(page, pages)
        shown = devices[(page - 1) * h.page_size: page * h.page_size]
        cards = [d.card(ctx.live.alerts_by_subject.get(d.device, 0)) for d in shown]
        states = sorted({d.state for d in ctx.live.devices.values()})
        return render(request, "cameras.html", s, cards=cards, q=q, state=state, sick=sick,
                      page=page, pages=pages, total=len(devices),
                      all_total=len(ctx.live.devices), states=states)

    def _timeline(device: str, day: dt.date | None) -> dict[str, Any]:
        now = int(time.time() * 1000)
        recent = ctx.catalog.list_videos(device=device, since_ms=max(0, now - TIMELINE_DAYS
                                                                         * DAY_MS), limit=10_000)
        days: dict[dt.date, int] = {}
        for v in recent:
            days[_day_of(v.first_capture_ms)] = days.get(_day_of(v.first_capture_ms), 0) + 1
        if day is None:
            live = ctx.live.devices.get(device)
            if recent:
                day = _day_of(recent[-1].first_capture_ms)
            elif live is not None and live.video is not None:
                day = _day_of(live.video.first_capture_ms)
            else:
                day = _day_of(now)
        start = _day_start(day)
        rows = [v for v in ctx.catalog.list_videos(device=device, since_ms=start,
                                                   limit=MAX_DAY_VIDEOS)
                if start <= v.first_capture_ms < start + DAY_MS]
        return {"day": day, "videos": rows, "days": sorted(days.items(), reverse=True),
                "prev": day - dt.timedelta(days=1), "next": day + dt.timedelta(days=1)}

    async def camera(request: Request) -> Response:
        s = require(request)
        device = request.path_params["device"]
        if not is_device_id(device):
            raise HTTPException(404, "no such camera")
        day_q = _query(request, "day", 10)
        day: dt.date | None = None
        if day_q:
            try:
                day = dt.date.fromisoformat(day_q)
            except ValueError:
                raise HTTPException(400, "day is YYYY-MM-DD") from None
        batch = _query(request, "batch", 128)
        if batch and not is_safe_name(batch):
            raise HTTPException(404, "no such video")
        try:
            tl = await anyio.to_thread.run_sync(_timeline, device, day)
            selected = (await anyio.to_thread.run_sync(ctx.catalog.get_video, device, batch)
                        if batch else (tl["videos"][-1] if tl["videos"] else None))
        except CatalogError as e:
            log.error("web_catalog", error=str(e)[:200])
            raise HTTPException(503, "the catalog is unavailable") from None
        verify = None
        if selected is not None and _query(request, "verify", 1) == "1":
            verify = await anyio.to_thread.run_sync(_verify, selected)
        live = ctx.live.devices.get(device)
        if live is None and not tl["days"] and selected is None:
            raise HTTPException(404, "no such camera")
        return render(request, "camera.html", s, device=device, live=live,
                      card=ctx.live.card(device), tl=tl, selected=selected, verify=verify,
                      alerts=[a.row() for a in ctx.live.alerts.values() if a.subject == device],
                      history=list(reversed(live.history)) if live else [],
                      message=_query(request, "msg", 200), error=_query(request, "err", 200))

    def _verify(row: VideoRow) -> dict[str, Any]:
        if ctx.public_key is None:
            return {"ok": False, "problems": ["no public key configured "
                                              "(http.video_public_key_file)"]}
        media = locate(row.location, where)
        if media is None:
            return {"ok": False, "problems": ["the video file is missing"]}
        if media.path is not None:
            res = verify_video(media.path, row, ctx.public_key)
        else:
            assert ctx.store is not None
            res = verify_video(ctx.store.get_bytes(row.location), row, ctx.public_key)
        return {"ok": res.ok, "problems": res.problems, "sha256": res.file_sha256}

    async def command(request: Request) -> Response:
        s = require(request)
        device = request.path_params["device"]
        if not is_device_id(device):
            raise HTTPException(404, "no such camera")
        form = await checked_form(request, s.sid)
        if s.role != "operator":
            raise HTTPException(403, "this needs the operator role")
        live = ctx.live.devices.get(device)
        back = f"/cameras/{device}?"
        try:
            payload = set_command(form, live.fields.get("frame_size") if live else None)
        except CommandError as e:
            return RedirectResponse(back + urllib.parse.urlencode({"err": str(e)}), 303)
        if ctx.publish is None:
            raise HTTPException(503, "not connected to the broker")
        topic = cmd_topic(ctx.settings.mqtt.topic_prefix, device)
        ok = await anyio.to_thread.run_sync(ctx.publish, topic, payload)
        log.info("web_command", user=s.user, device=device, payload=payload.decode(),
                 acked=ok)
        msg = {"msg": f"sent {payload.decode()}"} if ok else {
            "err": "the broker did not acknowledge the command"}
        return RedirectResponse(back + urllib.parse.urlencode(msg), 303)

    async def alerts(request: Request) -> Response:
        s = require(request)
        rows = sorted((a.row() for a in ctx.live.alerts.values()),
                      key=lambda r: (r["rule"], r["subject"]))
        return render(request, "alerts.html", s, alerts=rows)

    async def services(request: Request) -> Response:
        s = require(request)
        rows = [sv.row() for sv in sorted(ctx.live.services.values(), key=lambda x: x.name)]
        return render(request, "services.html", s, services=rows, counters=ctx.live.counters,
                      devices=len(ctx.live.devices), clients=len(ctx.broadcaster.clients),
                      catalog=ctx.catalog.backend, uptime_ms=int(ctx.started * 1000))

    # -- media ----------------------------------------------------------------------

    async def _row(request: Request) -> VideoRow:
        device, batch = request.path_params["device"], request.path_params["batch"]
        if not is_device_id(device) or not is_safe_name(batch):
            raise HTTPException(404, "no such video")
        try:
            row = await anyio.to_thread.run_sync(ctx.catalog.get_video, device, batch)
        except CatalogError:
            raise HTTPException(503, "the catalog is unavailable") from None
        if row is None:
            raise HTTPException(404, "no such video")
        return row

    async def video(request: Request) -> Response:
        require(request)
        row = await _row(request)
        media = await anyio.to_thread.run_sync(locate, row.location, where)
        if media is None:
            raise HTTPException(404, "the video file is missing")
        if media.url is not None:
            return RedirectResponse(media.url, 307, headers={"cache-control": "no-store"})
        assert media.path is not None
        download = _query(request, "download", 1) == "1"
        name = f"{row.device}_{row.batch}.mp4"
        return FileResponse(media.path, media_type="video/mp4",
                            filename=name if download else None,
                            content_disposition_type="attachment" if download else "inline",
                            headers={"cache-control": "private, max-age=3600"})

    async def thumb(request: Request) -> Response:
        require(request)
        device, batch = request.path_params["device"], request.path_params["batch"]
        live = ctx.live.devices.get(device) if is_device_id(device) else None
        if live is not None and live.video is not None and live.video.batch == batch:
            key = thumbnail_key(live.video.location, None)
        else:
            row = await _row(request)
            key = thumbnail_key(row.location, row.thumbnail)
        media = await anyio.to_thread.run_sync(locate, key, where)
        if media is None:
            raise HTTPException(404, "no thumbnail")
        if media.url is not None:
            return RedirectResponse(media.url, 307)
        assert media.path is not None
        return FileResponse(media.path, media_type="image/jpeg",
                            headers={"cache-control": "private, max-age=3600"})

    async def static(request: Request) -> Response:
        require(request)
        name = request.path_params["name"]
        if name not in ("app.js", "style.css"):
            raise HTTPException(404, "not found")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(HERE / "static" / name, media_type=kind)

    # -- live -----------------------------------------------------------------------

    async def events(request: Request) -> Response:
        require(request)
        client = ctx.broadcaster.connect()
        if client is None:
            raise HTTPException(503, "too many live connections")
        try:
            since = int(request.query_params.get("since", "-1")[:20])
        except ValueError:
            since = -1
        # Registered first, then the catch-up, both on the event loop that applies
        # changes: nothing falls between the page's render and this stream.
        # A number from before a restart of this service: every card is news.
        catch_up = (ctx.live.cards_since(since if since <= ctx.live.seq else -1)
                    if since >= 0 else [])

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 3000\n\n"
                for card in catch_up:
                    yield f"data: {json.dumps(card, separators=(',', ':'))}\n\n"
                while True:
                    try:
                        text = await asyncio.wait_for(client.queue.get(), 15)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if client.overflow or not text:
                        yield "event: resync\ndata: {}\n\n"
                        return
                    yield f"data: {text}\n\n"
            finally:
                ctx.broadcaster.disconnect(client)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, Redirect):
            return RedirectResponse(exc.url, 303)
        assert isinstance(exc, HTTPException)
        s = session_of(request)
        return render(request, "error.html", s, exc.status_code, code=exc.status_code,
                      detail=safe_text(exc.detail, 200))

    routes = [
        Route("/healthz", healthz),
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/login.css", stylesheet),
        Route("/logout", logout, methods=["POST"]),
        Route("/", home),
        Route("/cameras", cameras),
        Route("/cameras/{device}", camera),
        Route("/cameras/{device}/cmd", command, methods=["POST"]),
        Route("/alerts", alerts),
        Route("/services", services),
        Route("/videos/{device}/{batch}.mp4", video),
        Route("/thumbs/{device}/{batch}.jpg", thumb),
        Route("/static/{name}", static),
        Route("/events", events),
    ]
    app = Starlette(routes=routes, exception_handlers={Redirect: on_error,
                                                       HTTPException: on_error})
    extra = ""
    if ctx.settings.store.backend == "s3":
        extra = " " + (ctx.settings.store.s3.endpoint_url or "https:").rstrip("/")
    csp = ("default-src 'self'; script-src 'self'; style-src 'self'; "
           f"img-src 'self'{extra}; media-src 'self'{extra}; connect-src 'self'; "
           "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
    return SecurityHeaders(app, csp)


def live_json(change: dict[str, Any]) -> str:
    """A change as the browsers receive it (tests)."""
    return json.dumps(change, separators=(",", ":"))
