"""Sessions, CSRF tokens and the login rate limit (pure logic: no I/O).

A session cookie is ``<base64url JSON>.<base64url HMAC-SHA256>`` of
``{"u": name, "r": role, "s": session id, "e": expiry}`` under the session secret, so
the service keeps no session table; the account is looked up again at every request
(removing or demoting a user takes effect at once) and a logout revokes the session id.
A form's CSRF token is the HMAC of the session id, so it is bound to one session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

SESSION_COOKIE = "camstack_session"
LOGIN_COOKIE = "camstack_login"
MAX_COOKIE = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """A logged-in browser."""

    user: str
    role: str
    sid: str
    expires: int


class Sessions:
    """Issue and check session cookies and CSRF tokens."""

    def __init__(self, secret: bytes, max_age_s: int, max_revoked: int = 100_000) -> None:
        """Sign with ``secret``; sessions live ``max_age_s``."""
        self._secret = secret
        self.max_age_s = max_age_s
        self._revoked: OrderedDict[str, int] = OrderedDict()
        self._max_revoked = max_revoked

    def _mac(self, purpose: str, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose.encode() + b"\0" + data, hashlib.sha256).digest()

    def issue(self, user: str, role: str, now: float | None = None) -> tuple[str, Session]:
        """A new session: the cookie value and what it holds."""
        now = time.time() if now is None else now
        s = Session(user, role, secrets.token_urlsafe(18), int(now) + self.max_age_s)
        body = json.dumps({"u": s.user, "r": s.role, "s": s.sid, "e": s.expires},
                          separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._mac('session', body))}", s

    def check(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie holds when it is genuine, unexpired and not revoked."""
        if not cookie or len(cookie) > MAX_COOKIE or cookie.count(".") != 1:
            return None
        body_b64, mac_b64 = cookie.split(".")
        try:
            body, mac = _unb64(body_b64), _unb64(mac_b64)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        try:
            obj = json.loads(body)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        u, r, sid, exp = obj.get("u"), obj.get("r"), obj.get("s"), obj.get("e")
        if not (isinstance(u, str) and isinstance(r, str) and isinstance(sid, str)
                and isinstance(exp, int)):
            return None
        now = time.time() if now is None else now
        if exp < now or sid in self._revoked:
            return None
        return Session(u, r, sid, exp)

    def revoke(self, session: Session) -> None:
        """Refuse this session from now on (logout)."""
        self._revoked[session.sid] = session.expires
        now = time.time()
        while self._revoked and (len(self._revoked) > self._max_revoked
                                 or next(iter(self._revoked.values())) < now):
            self._revoked.popitem(last=False)

    def csrf_token(self, sid: str) -> str:
        """The CSRF token of every form of session (or login nonce) ``sid``."""
        return _b64(self._mac("csrf", sid.encode()))

    def csrf_ok(self, sid: str, token: object) -> bool:
        """Whether ``token`` is the CSRF token of ``sid``."""
        if not isinstance(token, str) or not sid or len(token) > 100:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(sid).encode())


class RateLimiter:
    """At most ``max_failures`` failures per key within ``window_s`` (bounded memory)."""

    def __init__(self, max_failures: int, window_s: float, max_keys: int = 100_000) -> None:
        """Allow ``max_failures`` per ``window_s`` per key; track ``max_keys`` keys."""
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._hits.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        q = self._recent(key, now)
        if len(q) < self.max_failures:
            return 0.0
        return max(0.0, q[0] + self.window_s - now)

    def fail(self, key: str, now: float | None = None) -> None:
        """Count one failure of ``key``."""
        now = time.monotonic() if now is None else now
        q = self._recent(key, now)
        q.append(now)
        while len(q) > self.max_failures:
            q.popleft()
        self._hits[key] = q
        self._hits.move_to_end(key)
        while len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)

    def reset(self, key: str) -> None:
        """Forget ``key`` (after a success)."""
        self._hits.pop(key, None)
