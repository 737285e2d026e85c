"""Safety screening: a pluggable checker for generated images and a prompt blocklist.

A :class:`SafetyChecker` looks at images and says which ones must not be shown. The bundled
:class:`ImageClassifierSafetyChecker` runs a transformers image-classification model from a local folder
(e.g. an NSFW classifier) and flags an image when a flagged label scores at least ``threshold``.

The :class:`PromptBlocklist` refuses prompts with blocked terms. It is always on when a subject is a child
(target age under 18) or the task is age transformation, and can be switched on for every request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from idglow.errors import IdGlowError, InputError, ModelFolderError

logger = logging.getLogger(__name__)

CHILD_AGE = 18
DEFAULT_FLAGGED_LABELS = ("nsfw", "porn", "hentai", "sexy", "explicit", "unsafe")
# Kept short on purpose: terms that have no place in a request that involves a child or re-ageing people.
DEFAULT_BLOCKED_TERMS = (
    "nude", "naked", "nudity", "topless", "undressed", "unclothed", "nsfw", "sexy", "sexual", "sex",
    "erotic", "lingerie", "underwear", "bikini", "seductive", "sensual", "provocative", "porn",
    "pornographic", "fetish", "bdsm", "kiss", "kissing", "bed", "bedroom", "bath", "bathing", "shower",
    "blood", "gore", "violent", "violence", "weapon", "gun", "knife", "injured", "wound",
)


class SafetyError(IdGlowError):
    """A request or output refused by the safety rules."""


class BlockedPromptError(SafetyError, InputError):
    """A prompt with a blocked term while the blocklist is active."""


@dataclass(frozen=True)
class SafetyVerdict:
    """flagged: the image must not be shown. label / score: the classifier's strongest flagged label."""

    flagged: bool
    label: str | None = None
    score: float = 0.0


@runtime_checkable
class SafetyChecker(Protocol):
    """Anything that screens generated images."""

    name: str

    def check(self, images: Sequence[Any]) -> list[SafetyVerdict]:
        """One verdict per image (PIL images), in order."""
        ...


class ImageClassifierSafetyChecker:
    """A transformers image classifier loaded from a local folder (``save_pretrained`` layout: config.json,
    weights, preprocessor_config.json). Labels in ``flagged_labels`` (case-insensitive) at or above
    ``threshold`` flag an image."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        flagged_labels: Iterable[str] = DEFAULT_FLAGGED_LABELS,
        threshold: float = 0.5,
        device: str | None = None,
    ):
        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise ModelFolderError(str(folder), ["config.json", "model weights", "preprocessor_config.json"],
                                   what="safety classifier")
        if not 0.0 < threshold <= 1.0:
            raise InputError(f"safety threshold {threshold} must be in (0, 1]")
        from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

        self.name = f"image-classifier:{folder.name}"
        self.threshold = float(threshold)
        self.flagged_labels = {label.lower() for label in flagged_labels}
        model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True).eval()
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        self._classify = pipeline("image-classification", model=model, image_processor=processor, device=device)
        labels = {str(v).lower() for v in self._classify.model.config.id2label.values()}
        if not labels & self.flagged_labels:
            raise InputError(
                f"safety classifier {folder} has labels {sorted(labels)}, none of which is a flagged label "
                f"({', '.join(sorted(self.flagged_labels))})"
            )

    def check(self, images: Sequence[Any]) -> list[SafetyVerdict]:
        if not images:
            return []
        results = self._classify(list(images), top_k=None)
        verdicts = []
        for scores in results:
            flagged = [(s["score"], s["label"]) for s in scores if str(s["label"]).lower() in self.flagged_labels]
            score, label = max(flagged, default=(0.0, None))
            verdicts.append(SafetyVerdict(flagged=score >= self.threshold, label=label, score=float(score)))
        return verdicts


def load_safety_checker(model_dir: str | Path | None, **kwargs) -> SafetyChecker | None:
    """The image-classifier checker in ``model_dir``, or None when no folder is given."""
    if not model_dir:
        return None
    return ImageClassifierSafetyChecker(model_dir, **kwargs)


_WORD = re.compile(r"[a-z0-9]+")


class PromptBlocklist:
    """Whole-word, case-insensitive term matching on prompts.

    ``always_on``: check every request; otherwise only requests with a child (target age < 18) or the age
    task are checked.
    """

    def __init__(self, terms: Iterable[str] = DEFAULT_BLOCKED_TERMS, *, always_on: bool = False):
        self.terms = frozenset(t.strip().lower() for t in terms if t and t.strip())
        self.always_on = always_on

    @classmethod
    def from_file(cls, path: str | Path, *, always_on: bool = False, extend_default: bool = True) -> PromptBlocklist:
        """Terms from a text file (one per line, ``#`` comments), added to the default terms."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"blocklist file {path} does not exist")
        lines = [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        extra = [ln for ln in lines if ln]
        return cls([*(DEFAULT_BLOCKED_TERMS if extend_default else ()), *extra], always_on=always_on)

    def applies(self, task: str, target_ages: Sequence[float | None]) -> bool:
        return self.always_on or task == "age" or any(a is not None and a < CHILD_AGE for a in target_ages)

    def matches(self, text: str) -> list[str]:
        words = _WORD.findall((text or "").lower())
        found = [w for w in words if w in self.terms]
        phrases = [t for t in self.terms if " " in t and t in (text or "").lower()]
        return sorted(set(found + phrases))

    def check(self, texts: Sequence[str], task: str, target_ages: Sequence[float | None]) -> None:
        """Raise BlockedPromptError when the list applies and any text has a blocked term."""
        if not self.applies(task, target_ages):
            return
        hits = sorted({term for text in texts for term in self.matches(text)})
        if hits:
            why = "the age task" if task == "age" else (
                "a child subject" if any(a is not None and a < CHILD_AGE for a in target_ages) else "this server"
            )
            raise BlockedPromptError(
                f"the prompt contains blocked term(s) {', '.join(repr(h) for h in hits)}, not allowed for {why}"
            )
