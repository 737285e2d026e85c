"""A request's subjects, in slot order (slot order is identity order everywhere)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_SUBJECTS = 6


@dataclass
class SubjectRef:
    """One person of a group request.

    image: a PIL image, a path, or an array (H, W, 3) uint8 RGB. target_age: the age to show this person at
    (age task). weight: per-person identity scale. face_index: which detected face to use when the photo has
    several (default: the largest).
    """

    image: Any
    target_age: float | None = None
    weight: float = 1.0
    label: str | None = None
    face_index: int | None = None

    @property
    def source(self) -> str | None:
        return str(self.image) if isinstance(self.image, (str, Path)) else None
