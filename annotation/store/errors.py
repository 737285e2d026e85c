"""Domain errors of the annotation services. Messages name the bad value."""

from __future__ import annotations

from idglow.errors import IdGlowError, InputError


class AnnotationError(IdGlowError):
    """Base class of the annotation services' errors."""


class NotFound(AnnotationError, LookupError):
    """A user, comparison, candidate ... that does not exist."""


class PermissionDenied(AnnotationError, PermissionError):
    """The caller's role does not allow the operation."""


class AuthenticationError(AnnotationError):
    """Wrong user name or password (the message never says which)."""


class AlreadyExists(AnnotationError, InputError):
    """A unique name (user, model version) that is already taken."""


class InvalidVote(AnnotationError, InputError):
    """A vote that cannot be recorded as given."""


class DuplicateVote(InvalidVote):
    """The user already voted on this comparison (with another idempotency key)."""


class UndoExpired(AnnotationError):
    """No vote of the user is recent enough to be undone."""
