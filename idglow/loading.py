"""Build a ready pipeline from user settings: the embedded tiny default, or local FLUX + adapter folders."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from idglow.errors import InputError
from idglow.faces.base import FaceAnalyzer

if TYPE_CHECKING:
    import torch

    from idglow.pipeline import IdGlowPipeline

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
    det_threshold: float | None = None  # face detection score threshold; None: the backend's documented default
    device: str | None = None  # default: cuda when available, else cpu
    dtype: str | None = None  # default: bfloat16 on cuda, float32 on cpu

    @property
    def is_tiny(self) -> bool:
        return self.model_dir in (None, "tiny")

    @property
    def default_steps(self) -> int:
        return 8 if self.is_tiny else 28

    @property
    def default_size(self) -> int:
        return 64 if self.is_tiny else 1024


def load_face_analyzer(settings: ModelSettings) -> FaceAnalyzer:
    """The face backend named by ``settings.faces`` (dlib, or insightface from ``settings.face_root``)."""
    if settings.faces == "dlib":
        from idglow.faces.dlib_backend import DlibAnalyzer

        return DlibAnalyzer(det_threshold=settings.det_threshold)
    if settings.faces == "insightface":
        from idglow.faces.insightface_backend import InsightFaceAnalyzer

        if not settings.face_root:
            raise InputError("--faces insightface needs --face-root, the folder that holds models/<pack>/")
        return InsightFaceAnalyzer(settings.face_root, pack=settings.face_pack, det_thresh=settings.det_threshold)
    raise InputError(f"unknown face backend {settings.faces!r}; expected dlib or insightface")


def resolve_dtype(name: str | None, device: str) -> torch.dtype:
    """A torch dtype from its name; default bfloat16 on CUDA and float32 elsewhere."""
    import torch

    dtype_name = name or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"unknown dtype {dtype_name!r}; use e.g. bfloat16 or float32")
    return dtype


def load_flux_pipeline(model: str | None, *, dtype: torch.dtype, adapter_dir: str | None = None,
                       adapter_dtype: torch.dtype | None = None, face_analyzer: FaceAnalyzer | None = None,
                       seed: int = 0, quantize: str | None = None, quant_backend: str = "auto") -> IdGlowPipeline:
    """The one loader of "the tiny model or a folder": ``model`` None or ``"tiny"`` gives the embedded tiny model
    (``idglow.tiny``, built from ``seed``), anything else a local FLUX folder in diffusers format.

    The frozen components (transformer, text encoders, VAE) come in ``dtype``; the adapter in ``adapter_dtype``
    (default ``dtype``) — from ``adapter_dir`` when given, else the folder's own ``adapter/`` or the tiny one.
    ``quantize="int8"`` loads the transformer with int8 weights through diffusers' ``quant_backend`` quantizer
    (:mod:`idglow.quantization`). The pipeline stays on the CPU; callers move it."""
    from idglow.adapter import IdGlowAdapter
    from idglow.pipeline import IdGlowPipeline, check_adapter_folder, check_flux_folder

    tiny = model in (None, "tiny")
    if not tiny:
        check_flux_folder(model)
    adapter_dtype = adapter_dtype or dtype
    adapter = None
    if adapter_dir:
        adapter = IdGlowAdapter.from_pretrained(str(check_adapter_folder(adapter_dir)), torch_dtype=adapter_dtype)
    if tiny:
        from idglow.tiny import tiny_pipeline

        pipe = tiny_pipeline(seed=seed, face_analyzer=face_analyzer)
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            _cast(getattr(pipe, name), dtype)
        if adapter is not None:
            pipe.adapter = adapter
        if pipe.adapter is not None:
            _cast(pipe.adapter, adapter_dtype)
        if quantize:
            from idglow.quantization import quantized_copy, transformer_quantization

            transformer = quantized_copy(pipe.transformer, transformer_quantization(quantize, quant_backend), dtype)
            pipe = IdGlowPipeline(**{**pipe.components, "transformer": transformer}, face_analyzer=face_analyzer)
            pipe.set_progress_bar_config(disable=True)
        return pipe
    torch_dtype = dtype if adapter_dtype == dtype else {"default": dtype, "adapter": adapter_dtype}
    if quantize:
        from idglow.quantization import pipeline_quantization

        kwargs = {"quantization_config": pipeline_quantization(quantize, quant_backend)}
    else:
        kwargs = {}
    return IdGlowPipeline.from_pretrained(model, adapter=adapter, face_analyzer=face_analyzer,
                                          torch_dtype=torch_dtype, **kwargs)


def _cast(module, dtype) -> None:
    """``module.to(dtype)`` unless it is in ``dtype`` already (diffusers warns on every cast)."""
    if any(p.dtype != dtype for p in module.parameters()):
        module.to(dtype)


def load_pipeline(settings: ModelSettings, face_analyzer: FaceAnalyzer | None = None, *, quantize: str | None = None,
                  quant_backend: str = "auto", cpu_offload: bool = False):
    """The pipeline these settings describe, on its device, with a face analyzer attached.

    ``quantize="int8"``: the transformer with int8 weights (see :func:`load_flux_pipeline`). ``cpu_offload``:
    diffusers' model CPU offload, each model on the GPU only while it runs (the adapter stays there)."""
    import torch

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(settings.dtype or ("float32" if settings.is_tiny else None), device)
    analyzer = face_analyzer if face_analyzer is not None else load_face_analyzer(settings)
    if settings.is_tiny:
        logger.info(TINY_MODEL_NOTE)
    else:
        from idglow.pipeline import check_flux_folder

        check_flux_folder(settings.model_dir)
        if not settings.adapter_dir and not (Path(settings.model_dir) / "adapter").is_dir():
            raise InputError(f"{settings.model_dir} holds no adapter/ folder; pass --adapter DIR")
    if cpu_offload and not device.startswith("cuda"):
        raise InputError(f"CPU offload needs a CUDA device; got device {device!r}")
    pipe = load_flux_pipeline(settings.model_dir, dtype=dtype, adapter_dir=settings.adapter_dir,
                              face_analyzer=analyzer, quantize=quantize, quant_backend=quant_backend)
    if pipe.adapter.config.id_dim != analyzer.embedding_dim:
        model = "the tiny model" if settings.is_tiny else "the adapter"
        raise InputError(f"{model} expects {pipe.adapter.config.id_dim}-d face embeddings but the "
                         f"{settings.faces} analyzer gives {analyzer.embedding_dim}-d")
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    return pipe.to(device)
