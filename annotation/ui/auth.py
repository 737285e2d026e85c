"""Sign-in for the annotation and research tabs, checked on the server for every event.

The page keeps only an opaque random token (in server-side session state); :class:`SessionAuth` maps it to
the user. Every check re-reads the user's role and active flag (one primary-key read), so a role change or a
deactivation reaches open sessions on their next call. Passwords are checked with
:func:`annotation.store.users.authenticate`.

Failed sign-ins slow down the client that made them, for that user name, with a capped backoff: while its wait
runs, a further attempt from that client for that name is refused at once with the wait in the answer
(:class:`SignInWait`) — nothing sleeps on the server and no queue place is held. Other clients signing in with
that name are not slowed down until the name has many failures from everywhere (``NAME_FREE_FAILURES``); then the
same capped backoff applies per name, at most ``MAX_DELAY_S`` at a time, so nobody — a researcher included — is
locked out by a stranger for longer than that.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from annotation.store.errors import AuthenticationError, PermissionDenied
from annotation.store.users import UserInfo, authenticate, current_user, has_role
from db.models import Role

DEFAULT_SESSION_TTL_S = 12 * 3600
FREE_FAILURES = 3  # failures of one client for one name before its backoff starts
NAME_FREE_FAILURES = 20  # failures for one name from all clients before the name's own backoff starts
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 8.0
FAILURE_MEMORY_S = 900  # a name's failures are forgotten after this long without one
MAX_TRACKED_NAMES = 10_000
MAX_NAME_CHARS = 200  # a longer user name is refused before anything is checked or remembered


class NotSignedIn(PermissionDenied):
    """No valid sign-in for an action that needs one."""


class SignInWait(AuthenticationError):
    """An attempt refused unchecked because its backoff is still running; ``wait_s`` says for how long."""

    def __init__(self, wait_s: float):
        self.wait_s = wait_s
        super().__init__(f"too many wrong sign-ins for this name: try again in {math.ceil(wait_s)} s")


@dataclass(frozen=True)
class SignedIn:
    """A session: its token, the signed-in user and when it expires (on the auth clock)."""

    token: str
    user: UserInfo
    expires: float


class SignInBackoff:
    """Failed sign-ins per key (a user name, or a user name and a client) → how long the next attempt waits."""

    def __init__(self, clock=time.monotonic, free_failures: int = FREE_FAILURES):
        self.clock = clock
        self.free_failures = free_failures
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key → (count, last failure)

    def delay(self, key: str) -> float:
        """Seconds left before the next attempt for ``key`` may be checked (0 while it has few recent failures)."""
        now = self.clock()
        with self._lock:
            count, last = self._failures.get(key, (0, now))
            if now - last > FAILURE_MEMORY_S:
                self._failures.pop(key, None)
                return 0.0
        if count < self.free_failures:
            return 0.0
        wait = min(FIRST_DELAY_S * 2 ** (count - self.free_failures), MAX_DELAY_S)
        return max(0.0, last + wait - now)

    def failed(self, key: str) -> None:
        """Count one failure for ``key`` now."""
        with self._lock:
            count, _ = self._failures.pop(key, (0, 0.0))
            self._failures[key] = (count + 1, self.clock())
            while len(self._failures) > MAX_TRACKED_NAMES:
                self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures."""
        with self._lock:
            self._failures.pop(key, None)


class SessionAuth:
    """Tokens of signed-in users, kept in memory (a restart signs everybody out)."""

    def __init__(self, sessions, *, ttl_s: float = DEFAULT_SESSION_TTL_S, clock=time.monotonic):
        self.sessions = sessions
        self.ttl_s = ttl_s
        self.clock = clock
        self.backoff = SignInBackoff(clock)  # per (client, name)
        self.name_backoff = SignInBackoff(clock, free_failures=NAME_FREE_FAILURES)  # per name, all clients
        self._tokens: dict[str, SignedIn] = {}
        self._lock = threading.Lock()

    def sign_in(self, username: str, password: str, client: str = "") -> SignedIn:
        """A new token for this user, or AuthenticationError. While the backoff of this ``client`` (its browser
        cookie or address) for this name, or of the name itself, is running, the attempt is refused unchecked
        with :class:`SignInWait` (nothing waits on the server)."""
        username = (username or "").strip()
        password = password or ""
        if len(username) > MAX_NAME_CHARS or len(password) > 1024:
            raise AuthenticationError("wrong user name or password")
        keyed = f"{client}\n{username}"
        wait = max(self.backoff.delay(keyed), self.name_backoff.delay(username))
        if wait > 0:
            raise SignInWait(wait)
        try:
            with self.sessions() as session:
                user = authenticate(session, username, password)
        except AuthenticationError:
            self.backoff.failed(keyed)
            self.name_backoff.failed(username)
            raise
        self.backoff.succeeded(keyed)
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
