"""Files a visitor downloads: ``idglow_<seed>.png`` per candidate and a zip with all of them plus the parameters.

They are written under ``<data_dir>/downloads/<visitor_id>/``, so deleting a visitor's data (or their expiry)
removes that one folder.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

from annotation.generation.request import CandidateResult, Downloads, GenerationResult
from db.types import utcnow
from idglow.errors import InputError

_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def downloads_dir(data_dir: str | os.PathLike[str], visitor_id: str) -> Path:
    """``<data_dir>/downloads/<visitor_id>``; the id must be a plain name (letters, digits, - and _)."""
    if not _VISITOR_ID.fullmatch(visitor_id or ""):
        raise InputError(f"visitor id {visitor_id!r} is not a valid id")
    return Path(data_dir) / "downloads" / visitor_id


def image_name(candidate: CandidateResult, several_versions: bool) -> str:
    """``idglow_<seed>.png``, with the model version added when one request ran on several versions."""
    if not several_versions:
        return f"idglow_{candidate.seed}.png"
    return f"idglow_{candidate.seed}_{_UNSAFE.sub('-', candidate.model_version)}.png"


def _parameters(result: GenerationResult, shown: list[CandidateResult], labels: list[str]) -> str:
    return json.dumps({
        "prompt": result.prompt, "prompt_source": result.prompt_source, "seed": result.seed,
        "people": labels, "params": result.params,
        "candidates": [{"model_version": c.model_version, "seed": c.seed, "identity": c.identity_scores}
                       for c in shown],
    }, indent=2, default=str)


def write_downloads(data_dir: str | os.PathLike[str], visitor_id: str, result: GenerationResult,
                    labels: list[str]) -> Downloads | None:
    """Write the shown candidates as PNGs and one zip (``idglow_<date>_<time>_seed<seed>.zip``) with them and
    ``parameters.json``. None when every image was withheld."""
    shown = [c for c in result.candidates if c.image is not None]
    if not shown:
        return None
    folder = downloads_dir(data_dir, visitor_id)
    folder.mkdir(parents=True, exist_ok=True)
    several = len({c.model_version for c in shown}) > 1
    stamp = utcnow().strftime("%Y-%m-%d_%H%M%S")
    images = []
    archive = folder / f"idglow_{stamp}_seed{result.seed}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for cand in shown:
            buf = io.BytesIO()
            cand.image.save(buf, format="PNG")
            path = folder / image_name(cand, several)
            path.write_bytes(buf.getvalue())
            images.append(path)
            zf.writestr(path.name, buf.getvalue())
        zf.writestr("parameters.json", _parameters(result, shown, labels))
    return Downloads(images=images, archive=archive)
