"""IdGlow: identity-preserving multi-subject group photos on FLUX.

``import idglow`` is cheap: it touches no network, no weights and no heavy framework. The public names
below are resolved lazily on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from idglow._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "IdentityWindow": "idglow.schedule",
    "linear_decay_weight": "idglow.schedule",
    "window_for_task": "idglow.schedule",
    "SubjectRef": "idglow.subjects",
    "IdGlowError": "idglow.errors",
    "InputError": "idglow.errors",
    "NoFaceError": "idglow.errors",
    "ModelFolderError": "idglow.errors",
    "Face": "idglow.faces",
    "FaceMatch": "idglow.faces",
    "FaceAnalyzer": "idglow.faces",
    "DlibAnalyzer": "idglow.faces",
    "InsightFaceAnalyzer": "idglow.faces",
    "align_crop": "idglow.faces",
    "match_faces": "idglow.faces",
    "IdGlowAdapter": "idglow.adapter",
    "IdGlowPipeline": "idglow.pipeline",
    "IdGlowOutput": "idglow.pipeline",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__ = lazy_getattr("idglow", _LAZY, globals())

if TYPE_CHECKING:  # pragma: no cover
    from idglow.adapter import IdGlowAdapter
    from idglow.errors import IdGlowError, InputError, ModelFolderError, NoFaceError
    from idglow.faces import (
        DlibAnalyzer,
        Face,
        FaceAnalyzer,
        FaceMatch,
        InsightFaceAnalyzer,
        align_crop,
        match_faces,
    )
    from idglow.pipeline import IdGlowOutput, IdGlowPipeline
    from idglow.schedule import IdentityWindow, linear_decay_weight, window_for_task
    from idglow.subjects import SubjectRef
