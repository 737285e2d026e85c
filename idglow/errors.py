"""Domain errors. Each message names the bad value so that a CLI or UI can show it as it is."""

from __future__ import annotations


class IdGlowError(Exception):
    """Base class of every error IdGlow raises on purpose."""


class InputError(IdGlowError, ValueError):
    """A request or file that IdGlow cannot use as given."""


class NoFaceError(InputError):
    """A reference photo in which no face was found."""

    def __init__(self, slot: int, source: str | None = None):
        self.slot = slot
        self.source = source
        where = f" ({source})" if source else ""
        super().__init__(f"no face found in the photo of subject {slot + 1}{where}")


class ModelFolderError(IdGlowError, FileNotFoundError):
    """A local model folder that is missing or lacks files it must have."""

    def __init__(self, folder: str, missing: list[str], what: str = "model"):
        self.folder = folder
        self.missing = list(missing)
        super().__init__(f"{what} folder {folder!r} is missing or incomplete; expected: {', '.join(self.missing)}")
