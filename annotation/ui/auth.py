"""Sign-in for the annotation and research tabs, checked on the server for every event.

The page keeps only an opaque random token (in server-side session state); :class:`SessionAuth` maps it to
the user. Every check re-reads the user's role and active flag (one primary-key read), so a role change or a
deactivation reaches open sessions on their next call. Passwords are checked with
:func:`annotation.store.users.authenticate`. Failed sign-ins slow that user name down with a capped backoff: a later
attempt waits (at most ``MAX_DELAY_S``) and is then checked, so nobody — a researcher included — can be locked
out by a stranger typing wrong passwords.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from annotation.store.errors import AuthenticationError, PermissionDenied
from annotation.store.users import UserInfo, authenticate, current_user, has_role
from db.models import Role

DEFAULT_SESSION_TTL_S = 12 * 3600
FREE_FAILURES = 3  # failures before the backoff starts
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 8.0
FAILURE_MEMORY_S = 900  # a name's failures are forgotten after this long without one
MAX_TRACKED_NAMES = 10_000


class NotSignedIn(PermissionDenied):
    """No valid sign-in for an action that needs one."""


@dataclass(frozen=True)
class SignedIn:
    """A session: its token, the signed-in user and when it expires (on the auth clock)."""

    token: str
    user: UserInfo
    expires: float


class SignInBackoff:
    """Failed sign-ins per user name → how long the next attempt for that name waits before it is checked."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # name → (count, last failure)

    def delay(self, name: str) -> float:
        """Seconds the next attempt for ``name`` must wait (0 while it has few recent failures)."""
        now = self.clock()
        with self._lock:
            count, last = self._failures.get(name, (0, now))
            if now - last > FAILURE_MEMORY_S:
                self._failures.pop(name, None)
                return 0.0
        if count < FREE_FAILURES:
            return 0.0
        wait = min(FIRST_DELAY_S * 2 ** (count - FREE_FAILURES), MAX_DELAY_S)
        return max(0.0, last + wait - now)

    def failed(self, name: str) -> None:
        with self._lock:
            count, _ = self._failures.pop(name, (0, 0.0))
            self._failures[name] = (count + 1, self.clock())
            while len(self._failures) > MAX_TRACKED_NAMES:
                self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


class SessionAuth:
    """Tokens of signed-in users, kept in memory (a restart signs everybody out)."""

    def __init__(self, sessions, *, ttl_s: float = DEFAULT_SESSION_TTL_S, clock=time.monotonic, sleep=time.sleep):
        self.sessions = sessions
        self.ttl_s = ttl_s
        self.clock = clock
        self.sleep = sleep
        self.backoff = SignInBackoff(clock)
        self._tokens: dict[str, SignedIn] = {}
        self._lock = threading.Lock()

    def sign_in(self, username: str, password: str) -> SignedIn:
        """A new token for this user, or AuthenticationError. Attempts for a name with recent failures wait
        first (capped), then are checked like any other."""
        username = (username or "").strip()
        wait = self.backoff.delay(username)
        if wait > 0:
            self.sleep(wait)
        try:
            with self.sessions() as session:
                user = authenticate(session, username, password or "")
        except AuthenticationError:
            self.backoff.failed(username)
            raise
        self.backoff.succeeded(username)
        signed = SignedIn(secrets.token_urlsafe(32), user, self.clock() + self.ttl_s)
        with self._lock:
            self._tokens[signed.token] = signed
        return signed

    def sign_out(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._tokens.pop(token, None)

    def _signed(self, token: str | None) -> SignedIn | None:
        if not token or not isinstance(token, str):
            return None
        with self._lock:
            signed = self._tokens.get(token)
            if signed is not None and signed.expires < self.clock():
                del self._tokens[token]
                return None
            return signed

    def user(self, token: str | None) -> UserInfo | None:
        """The signed-in user as stored now (role re-read), or None; a deactivated user's token is dropped."""
        signed = self._signed(token)
        if signed is None:
            return None
        with self.sessions() as session:
            user = current_user(session, signed.user.id)
        if user is None:
            self.sign_out(token)
        return user

    def require(self, token: str | None, role: Role | str, action: str) -> UserInfo:
        """The signed-in user if their current role is at least ``role``; else NotSignedIn / PermissionDenied."""
        user = self.user(token)
        if user is None:
            raise NotSignedIn(f"sign in as {Role(role).value} to {action}")
        if not has_role(user, role):
            raise PermissionDenied(f"{user.username} ({user.role.value}) may not {action}: needs {Role(role).value}")
        return user
