"""Sign-in for the annotation and research tabs, checked on the server for every event.

The page keeps only an opaque random token (in server-side session state); :class:`SessionAuth` maps it to
the user and role. Passwords are checked with :func:`annotation.users.authenticate` (the hashes written by
``idglow users add``). Repeated failures for one user name are slowed down.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from annotation.errors import AuthenticationError, PermissionDenied
from annotation.users import UserInfo, authenticate, has_role
from db.models import Role

DEFAULT_SESSION_TTL_S = 12 * 3600
MAX_FAILURES = 5
FAILURE_WINDOW_S = 300


class NotSignedIn(PermissionDenied):
    """No valid sign-in for an action that needs one."""


@dataclass(frozen=True)
class SignedIn:
    token: str
    user: UserInfo
    expires: float


class SessionAuth:
    """Tokens of signed-in users, kept in memory (a restart signs everybody out)."""

    def __init__(self, sessions, *, ttl_s: float = DEFAULT_SESSION_TTL_S, clock=time.monotonic):
        self.sessions = sessions
        self.ttl_s = ttl_s
        self.clock = clock
        self._tokens: dict[str, SignedIn] = {}
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def sign_in(self, username: str, password: str) -> SignedIn:
        username = (username or "").strip()
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get(username, []) if now - t < FAILURE_WINDOW_S]
            self._failures[username] = recent
            if len(recent) >= MAX_FAILURES:
                raise AuthenticationError("too many failed sign-ins for this user; wait a few minutes")
        try:
            with self.sessions() as session:
                user = authenticate(session, username, password or "")
        except AuthenticationError:
            with self._lock:
                self._failures.setdefault(username, []).append(now)
            raise
        signed = SignedIn(secrets.token_urlsafe(32), user, now + self.ttl_s)
        with self._lock:
            self._failures.pop(username, None)
            self._tokens[signed.token] = signed
        return signed

    def sign_out(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._tokens.pop(token, None)

    def user(self, token: str | None) -> UserInfo | None:
        if not token or not isinstance(token, str):
            return None
        with self._lock:
            signed = self._tokens.get(token)
            if signed is None:
                return None
            if signed.expires < self.clock():
                del self._tokens[token]
                return None
            return signed.user

    def require(self, token: str | None, role: Role | str, action: str) -> UserInfo:
        """The signed-in user if their role is at least ``role``; else NotSignedIn / PermissionDenied."""
        user = self.user(token)
        if user is None:
            raise NotSignedIn(f"sign in as {Role(role).value} to {action}")
        if not has_role(user, role):
            raise PermissionDenied(f"{user.username} ({user.role.value}) may not {action}: needs {Role(role).value}")
        return user
