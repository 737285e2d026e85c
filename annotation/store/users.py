"""Users, password hashing (argon2id) and roles."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation.store.errors import AlreadyExists, AuthenticationError, NotFound, PermissionDenied
from db.models import Role, User
from idglow.errors import InputError

logger = logging.getLogger(__name__)

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD_LENGTH = 8
# Roles that may do what a role may do (admin ⊇ researcher ⊇ annotator).
_RANK = {Role.annotator: 0, Role.researcher: 1, Role.admin: 2}


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    """The Argon2 hash of ``password``."""
    return _hasher().hash(password)


def parse_role(role: Role | str) -> Role:
    """``role`` as a Role; InputError naming the choices when it is none of them."""
    try:
        return Role(role)
    except ValueError:
        choices = "|".join(r.value for r in Role)
        raise InputError(f"unknown role {role!r}; expected {choices}") from None


@dataclass(frozen=True)
class UserInfo:
    """A user's id, name and role, detached from the session."""

    id: int
    username: str
    role: Role


def _info(user: User) -> UserInfo:
    return UserInfo(id=user.id, username=user.username, role=user.role)


def create_user(
    session: Session, username: str, password: str, role: Role | str = Role.annotator
) -> UserInfo:
    """Add a user. Raises InputError for a bad name, short password or role; AlreadyExists for a taken name."""
    role = parse_role(role)
    if not USERNAME_RE.match(username or ""):
        raise InputError(f"invalid user name {username!r}: use 1-64 letters, digits or _ . @ -")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InputError(f"password for {username!r} is too short: at least {MIN_PASSWORD_LENGTH} characters")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise AlreadyExists(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), role=role, is_active=True)
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise AlreadyExists(f"user {username!r} already exists") from None
    logger.info("created user %s (%s)", username, role.value)
    return _info(user)


_DUMMY_HASH: list[str] = []  # one hash of a random password, made on first use


def _dummy_hash() -> str:
    """A real argon2 hash to verify against when the user name is unknown, so that an unknown name takes as
    long to refuse as a wrong password (no user-name enumeration by timing)."""
    if not _DUMMY_HASH:
        import secrets

        _DUMMY_HASH.append(hash_password(secrets.token_urlsafe(16)))
    return _DUMMY_HASH[0]


def authenticate(session: Session, username: str, password: str) -> UserInfo:
    """The user if the password matches, else AuthenticationError (same message and about the same time for
    every failure: an unknown or deactivated user is checked against a dummy hash)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    user = session.scalar(select(User).where(User.username == username))
    hasher = _hasher()
    known = user is not None and user.is_active
    try:
        hasher.verify(user.password_hash if known else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        raise AuthenticationError("wrong user name or password") from None
    if not known:
        raise AuthenticationError("wrong user name or password")
    if hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hasher.hash(password)
        session.commit()
    return _info(user)


def current_user(session: Session, user_id: int) -> UserInfo | None:
    """The user's role as stored now, or None if the user was removed or deactivated (one primary-key read)."""
    row = session.execute(select(User.id, User.username, User.role, User.is_active).where(User.id == user_id)).first()
    if row is None or not row.is_active:
        return None
    return UserInfo(id=row.id, username=row.username, role=row.role)


def set_role(session: Session, username: str, role: Role | str) -> UserInfo:
    """Change a user's role; open sessions get the new role on their next call."""
    user = get_user_by_name(session, username)
    user.role = parse_role(role)
    session.commit()
    logger.info("user %s is now %s", username, user.role.value)
    return _info(user)


def set_active(session: Session, username: str, active: bool) -> None:
    """Deactivate (or reactivate) a user; a deactivated user's open sessions end on their next call."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"unknown user {username!r}")
    user.is_active = bool(active)
    session.commit()
    logger.info("user %s %s", username, "reactivated" if active else "deactivated")


def get_user(session: Session, user_id: int) -> User:
    """The active user with this id; NotFound otherwise."""
    user = session.get(User, user_id)
    if user is None or not user.is_active:
        raise NotFound(f"unknown user id {user_id!r}")
    return user


def get_user_by_name(session: Session, username: str) -> User:
    """The active user with this name; NotFound otherwise."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.is_active:
        raise NotFound(f"unknown user {username!r}")
    return user


def has_role(user: User | UserInfo, role: Role | str) -> bool:
    """Whether ``user``'s role is ``role`` or ranks above it (annotator < researcher < admin)."""
    return _RANK[user.role] >= _RANK[Role(role)]


def require_role(user: User | UserInfo, role: Role | str, action: str) -> None:
    """Raise PermissionDenied unless ``user``'s role is at least ``role``."""
    if not has_role(user, role):
        raise PermissionDenied(
            f"user {user.username!r} ({user.role.value}) may not {action}: needs {Role(role).value}"
        )


def list_users(session: Session) -> list[UserInfo]:
    """Every user (active or not), by id."""
    return [_info(u) for u in session.scalars(select(User).order_by(User.id))]
