"""int8 weights for the transformer's blocks (optimum-quanto on the CPU here), with identity still injected, and
the errors for a missing backend or CPU offload without a GPU."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from idglow.cli import main
from idglow.errors import InputError
from idglow.loading import load_flux_pipeline
from idglow.quantization import quantization_backend, transformer_quantization
from idglow.testing import random_embeddings, tiny_pipeline


def run(pipe, **kwargs) -> np.ndarray:
    out = pipe("a group photo", seed=0, num_inference_steps=6, height=64, width=64, output_type="np", **kwargs)
    return np.asarray(out.images)


@pytest.fixture
def no_backends(monkeypatch):
    """Make torchao and optimum-quanto fail to import, as when they are not installed."""
    for name in ("torchao", "torchao.quantization", "optimum.quanto"):
        monkeypatch.setitem(sys.modules, name, None)


def _int8_linears(transformer) -> tuple[int, int]:
    """(linear layers with int8 weights, all linear layers) of a transformer's blocks."""
    from optimum.quanto import QLinear

    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    linears = [m for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]
    return sum(isinstance(m, QLinear) and m.weight._data.dtype == torch.int8 for m in linears), len(linears)


def test_int8_transformer_keeps_the_identity_image():
    pytest.importorskip("optimum.quanto")
    plain = load_flux_pipeline(None, dtype=torch.float32)
    int8 = load_flux_pipeline(None, dtype=torch.float32, quantize="int8", quant_backend="quanto")
    quantized, total = _int8_linears(int8.transformer)
    assert total and quantized == total
    assert _int8_linears(plain.transformer)[0] == 0
    emb = random_embeddings(2, seed=1)
    base, identity, quantized_identity = run(plain), run(plain, subject_embeds=emb), run(int8, subject_embeds=emb)
    error = np.abs(quantized_identity - identity).max()
    assert 0 < error < 0.05  # int8 rounding, nothing more
    assert np.abs(identity - base).max() > 10 * error  # the identity hooks act on the quantized transformer


def test_int8_from_a_model_folder_quantizes_only_the_transformer(tmp_path):
    pytest.importorskip("optimum.quanto")
    tiny_pipeline(seed=0).save_pretrained(tmp_path / "flux")
    pipe = load_flux_pipeline(str(tmp_path / "flux"), dtype=torch.float32, quantize="int8", quant_backend="quanto")
    quantized, total = _int8_linears(pipe.transformer)
    assert total and quantized == total
    assert all(type(m) is torch.nn.Linear for m in pipe.text_encoder_2.modules() if isinstance(m, torch.nn.Linear))
    assert np.isfinite(run(pipe, subject_embeds=random_embeddings(2, seed=1))).all()


def test_generate_with_int8_weights(tmp_path, capsys, sample_portraits):
    pytest.importorskip("optimum.quanto")
    subjects = ["--subject", str(sample_portraits["person1"]), "--subject", str(sample_portraits["person2"])]
    common = [*subjects, "--seed", "4", "--steps", "4"]
    assert main(["generate", *common, "--out", str(tmp_path / "plain")]) == 0
    assert main(["generate", *common, "--quantize", "int8", "--quant-backend", "quanto",
                 "--out", str(tmp_path / "int8")]) == 0
    capsys.readouterr()
    meta = json.loads((tmp_path / "int8" / "idglow_4.json").read_text())
    assert meta["model"]["quantize"] == "int8" and meta["model"]["quant_backend"] == "quanto"
    plain = np.asarray(Image.open(tmp_path / "plain" / "idglow_4.png"), dtype=int)
    int8 = np.asarray(Image.open(tmp_path / "int8" / "idglow_4.png"), dtype=int)
    assert np.abs(plain - int8).max() <= 8


def test_missing_backend_is_named_with_the_package_to_install(no_backends, tmp_path, capsys, sample_portraits):
    with pytest.raises(InputError, match=r"pip install torchao` or `pip install optimum-quanto"):
        quantization_backend("auto")
    with pytest.raises(InputError, match=r"needs optimum-quanto, which is not installed"):
        quantization_backend("quanto")
    code = main(["generate", "--subject", str(sample_portraits["person1"]), "--quantize", "int8",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "int8 quantization needs torchao or optimum-quanto" in err


def test_quantization_configs_per_backend():
    with pytest.raises(InputError, match="quantization 'int4' is not supported; choose one of int8"):
        transformer_quantization("int4", "auto")
    with pytest.raises(InputError, match="backend 'bnb' is unknown"):
        transformer_quantization("int8", "bnb")
    if quantization_backend("auto") == "quanto":
        assert type(transformer_quantization("int8", "auto")).__name__ == "QuantoConfig"


def test_torchao_config_is_int8_weight_only():
    pytest.importorskip("torchao.quantization")
    from torchao.quantization import Int8WeightOnlyConfig

    config = transformer_quantization("int8", "torchao")
    assert type(config).__name__ == "TorchAoConfig" and isinstance(config.quant_type, Int8WeightOnlyConfig)


def test_cpu_offload_without_a_gpu_is_refused(tmp_path, capsys, sample_portraits):
    code = main(["generate", "--subject", str(sample_portraits["person1"]), "--cpu-offload", "--device", "cpu",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "CPU offload needs a CUDA device; got device 'cpu'" in capsys.readouterr().err
