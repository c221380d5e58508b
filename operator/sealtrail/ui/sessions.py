"""Browser sessions of the audit UI: a random id in a cookie, everything else on the server.

Why not put the token in the cookie: the cookie travels with every request and lands in proxy
logs and browser profiles; an id that dies with the worker (or after `IDLE_SECONDS`) is worth
far less to whoever finds it. The session keeps a keyed digest of the token it was opened
with, never the token, and asks `authenticate` again on every request: a token removed from
the worker's config closes its sessions at once.

Every session has its own CSRF token, which each state-changing form carries back; the cookie
is also SameSite=Strict, so another site's page cannot even make the browser send it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["COOKIE", "IDLE_SECONDS", "MAX_SESSIONS", "Session", "Sessions"]

#: The cookie's name; it holds a session id and nothing else.
COOKIE: Final = "sealtrail_ui"
#: A session nobody used for this long is gone (an unattended browser stops being a way in).
IDLE_SECONDS: Final = 8 * 3600
#: Sessions kept at most, signed in and not (each kind apart); the least recently used goes
#: first. Apart, so that a flood of sign-in pages (each makes a session for its CSRF token)
#: can never push out the sessions of people signed in.
MAX_SESSIONS: Final = 10_000


@dataclass(slots=True)
class Session:
    """One browser: its CSRF token and, once signed in, the token digest it proved."""

    id: str
    csrf: str
    token_digest: bytes | None = None
    seen: float = field(default_factory=time.monotonic)

    @property
    def signed_in(self) -> bool:
        """True once a valid token was presented."""
        return self.token_digest is not None

    def csrf_ok(self, given: str | None) -> bool:
        """The form's CSRF token is this session's (compared in constant time)."""
        return given is not None and hmac.compare_digest(self.csrf.encode(), given.encode())

    @property
    def fingerprint(self) -> str:
        """A short name for this session in audit events: not the id, nothing to replay."""
        return hashlib.sha256(self.id.encode()).hexdigest()[:12]


class Sessions:
    """Every live session of one process, by id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """No sessions yet; a key of this process for token digests."""
        self._key = secrets.token_bytes(32)
        self._clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()  # signed in
        self._pending: OrderedDict[str, Session] = OrderedDict()  # not (yet)

    def digest(self, token: str) -> bytes:
        """A token's digest under this process's key (no use outside this process)."""
        return hmac.new(self._key, token.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).digest()

    def new(self) -> Session:
        """A fresh session, not signed in."""
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                          seen=self._clock())
        self._keep(self._pending, session)
        return session

    @staticmethod
    def _keep(pool: OrderedDict[str, Session], session: Session) -> None:
        pool[session.id] = session
        while len(pool) > MAX_SESSIONS:
            pool.popitem(last=False)

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, touched; None if unknown or idle too long."""
        if not session_id:
            return None
        for pool in (self._by_id, self._pending):
            session = pool.get(session_id)
            if session is None:
                continue
            now = self._clock()
            if now - session.seen > IDLE_SECONDS:
                del pool[session_id]
                return None
            session.seen = now
            pool.move_to_end(session_id)
            return session
        return None

    def sign_in(self, old: Session | None, token_digest: bytes) -> Session:
        """A new session (new id) for a proven token; the old one, if any, is gone.

        A new id at sign-in: an id someone planted in the browser before (session fixation)
        is never the one that gets the rights.
        """
        if old is not None:
            self.end(old)
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                          token_digest=token_digest, seen=self._clock())
        self._keep(self._by_id, session)
        return session

    def end(self, session: Session) -> None:
        """Sign out: the id stops working."""
        self._by_id.pop(session.id, None)
        self._pending.pop(session.id, None)
