"""Build a ready pipeline from user settings: the embedded tiny default, or local FLUX + adapter folders."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from idglow.errors import InputError
from idglow.faces.base import FaceAnalyzer

logger = logging.getLogger(__name__)

TINY_MODEL_NOTE = (
    "Running the embedded tiny demo model: random, untrained weights that produce abstract images. "
    "Point --model at a FLUX checkpoint in diffusers format and --adapter at IdGlow adapter weights for real photos."
)


@dataclass(frozen=True)
class ModelSettings:
    """Where the weights are. All None → the embedded tiny model with dlib faces."""

    model_dir: str | None = None
    adapter_dir: str | None = None
    faces: str = "dlib"  # "dlib" | "insightface"
    face_root: str | None = None  # insightface: folder holding models/<pack>/
    face_pack: str = "antelopev2"
    device: str | None = None  # default: cuda when available, else cpu
    dtype: str | None = None  # default: bfloat16 on cuda, float32 on cpu

    @property
    def is_tiny(self) -> bool:
        return self.model_dir is None

    @property
    def default_steps(self) -> int:
        return 8 if self.is_tiny else 28

    @property
    def default_size(self) -> int:
        return 64 if self.is_tiny else 1024


def load_face_analyzer(settings: ModelSettings) -> FaceAnalyzer:
    if settings.faces == "dlib":
        from idglow.faces.dlib_backend import DlibAnalyzer

        return DlibAnalyzer()
    if settings.faces == "insightface":
        from idglow.faces.insightface_backend import InsightFaceAnalyzer

        if not settings.face_root:
            raise InputError("--faces insightface needs --face-root, the folder that holds models/<pack>/")
        return InsightFaceAnalyzer(settings.face_root, pack=settings.face_pack)
    raise InputError(f"unknown face backend {settings.faces!r}; expected dlib or insightface")


def load_pipeline(settings: ModelSettings, face_analyzer: FaceAnalyzer | None = None):
    """The pipeline these settings describe, on its device, with a face analyzer attached."""
    import torch

    from idglow.pipeline import IdGlowPipeline, check_adapter_folder, check_flux_folder
    from idglow.testing import tiny_pipeline

    if settings.adapter_dir and not settings.model_dir:
        raise InputError("--adapter needs --model (the FLUX checkpoint the adapter was trained on)")
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = settings.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"unknown dtype {dtype_name!r}")
    analyzer = face_analyzer if face_analyzer is not None else load_face_analyzer(settings)
    if settings.is_tiny:
        logger.info(TINY_MODEL_NOTE)
        pipe = tiny_pipeline(seed=0, face_analyzer=analyzer)
        if analyzer.embedding_dim != pipe.adapter.config.id_dim:
            raise InputError(
                f"the tiny model expects {pipe.adapter.config.id_dim}-d face embeddings (dlib); "
                f"the {settings.faces} analyzer gives {analyzer.embedding_dim}"
            )
        return pipe.to(device)
    check_flux_folder(settings.model_dir)
    if settings.adapter_dir:
        check_adapter_folder(settings.adapter_dir)
    elif not (Path(settings.model_dir) / "adapter").is_dir():
        raise InputError(f"{settings.model_dir} holds no adapter/ folder; pass --adapter DIR")
    pipe = IdGlowPipeline.from_pretrained(
        settings.model_dir, adapter=settings.adapter_dir, face_analyzer=analyzer, torch_dtype=dtype
    )
    if pipe.adapter.config.id_dim != analyzer.embedding_dim:
        raise InputError(
            f"adapter expects {pipe.adapter.config.id_dim}-d face embeddings but the {settings.faces} analyzer "
            f"gives {analyzer.embedding_dim}-d"
        )
    return pipe.to(device)
