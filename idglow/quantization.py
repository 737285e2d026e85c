"""int8 weights for the FLUX transformer, through diffusers' quantization backends, for GPUs with less memory.

diffusers quantizes the transformer while it loads (``quantization_config`` of ``from_pretrained``), with
torchao (``TorchAoConfig(Int8WeightOnlyConfig())``) or optimum-quanto (``QuantoConfig(weights_dtype="int8")``),
optional packages that IdGlow does not install: weight-only int8, activations in the compute dtype. The IdGlow
adapter keeps its dtype, and the identity hooks on the transformer's blocks work as on the full-precision model.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
from typing import TYPE_CHECKING

from idglow.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("int8",)
BACKENDS = ("auto", "torchao", "quanto")
_BACKEND_MODULES = {"torchao": "torchao.quantization", "quanto": "optimum.quanto"}
_PACKAGES = {"torchao": "torchao", "quanto": "optimum-quanto"}


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # not installed, or built for another torch
        return False
    return True


def quantization_backend(choice: str = "auto") -> str:
    """``"torchao"`` or ``"quanto"``: the one asked for if it imports, or with ``"auto"`` the first that does.

    Raises InputError naming the package to install when the backend (or, with auto, every backend) is missing.
    """
    if choice not in BACKENDS:
        raise InputError(f"quantization backend {choice!r} is unknown; choose one of {', '.join(BACKENDS)}")
    names = list(_BACKEND_MODULES) if choice == "auto" else [choice]
    for name in names:
        if _importable(_BACKEND_MODULES[name]):
            return name
    import torch

    packages = " or ".join(f"`pip install {_PACKAGES[n]}`" for n in names)
    raise InputError(f"int8 quantization needs {' or '.join(_PACKAGES[n] for n in names)}, which is not "
                     f"installed (or does not import with torch {torch.__version__}); run {packages}, or "
                     f"generate without quantization")


def transformer_quantization(weights: str = "int8", backend: str = "auto"):
    """diffusers' quantization config of the transformer: int8 weight-only with ``backend`` (resolved by
    :func:`quantization_backend`)."""
    if weights not in QUANTIZATIONS:
        raise InputError(f"quantization {weights!r} is not supported; choose one of {', '.join(QUANTIZATIONS)}")
    if quantization_backend(backend) == "torchao":
        from diffusers import TorchAoConfig

        # torchao is optional (not a declared dependency): imported by name only when it is the backend in use
        return TorchAoConfig(importlib.import_module(_BACKEND_MODULES["torchao"]).Int8WeightOnlyConfig())
    from diffusers import QuantoConfig

    return QuantoConfig(weights_dtype="int8")


def pipeline_quantization(weights: str = "int8", backend: str = "auto"):
    """The ``quantization_config`` of ``IdGlowPipeline.from_pretrained`` that quantizes only the transformer."""
    from diffusers.quantizers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping={"transformer": transformer_quantization(weights, backend)})


def quantized_copy(transformer: nn.Module, config, dtype: torch.dtype) -> nn.Module:
    """A transformer built in memory (the tiny model), loaded again through ``config``'s quantizer."""
    with tempfile.TemporaryDirectory() as folder:
        transformer.save_pretrained(folder)
        quantized = type(transformer).from_pretrained(folder, quantization_config=config, torch_dtype=dtype)
    logger.info("transformer loaded with %s", type(config).__name__)
    return quantized.eval()
