"""A tiny insightface model pack written to disk, so tests drive insightface's real loading and inference code.

The pack holds three small ONNX graphs that insightface's ``model_zoo`` routes by their input/output shapes,
exactly as it routes a real pack such as ``antelopev2`` or ``buffalo_l``:

- ``det_tiny.onnx`` — an SCRFD-style detector: one input, 9 outputs (scores, boxes, keypoints for strides
  8/16/32, 2 anchors each). Its stride-32 head is a hand-set "bright square" detector: a 32×32 cell of the
  detector input whose mean brightness is high scores as a face, with the cell as its box and 5 keypoints at
  the ArcFace template positions inside it. The stride-8 and stride-16 heads never fire. Tests can therefore
  place faces where they want and know which boxes to expect. Boxes are one 32-pixel cell of the detector
  input, so use a ``det_size`` close to the image size (a 128×128 image with ``det_size=(128, 128)``).
- ``w600k_tiny.onnx`` — an ArcFace-style recognizer: (N, 3, 112, 112) → 8×8 average pool → a random linear
  projection → ``embedding_dim`` features.
- ``genderage.onnx`` (optional) — an attribute model: (N, 3, 96, 96) → 8×8 average pool → random linear
  map → sigmoid → (gender logits ×2, age / 100).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from idglow.faces.align import ARCFACE_TEMPLATE

DETECTOR_FILE = "det_tiny.onnx"
RECOGNIZER_FILE = "w600k_tiny.onnx"
GENDERAGE_FILE = "genderage.onnx"
FACE_STRIDE = 32  # the detector's faces are the 32×32 cells of its input
_OPSET = 13
_IR_VERSION = 8


def _save(model, path: Path) -> None:
    import onnx

    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _detector(rng: np.random.Generator):
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    outputs = {"score": [], "bbox": [], "kps": []}
    widths = {"score": 1, "bbox": 4, "kps": 10}
    anchors = 2
    for stride in (8, 16, 32):
        active = stride == FACE_STRIDE
        for kind, width in widths.items():
            weight = np.zeros((anchors * width, 3, stride, stride), dtype=np.float32)
            bias = np.zeros(anchors * width, dtype=np.float32)
            if kind == "score":
                if active:
                    # Input pixels are (v − 127.5) / 128 ∈ [−1, 1]; logit = 10 · (mean − 0.5), plus a little
                    # noise so the two anchors differ: white cell → 0.99, grey → 0.007, black → 3e−7.
                    weight[:] = 10.0 / (3 * stride * stride)
                    weight += rng.normal(0.0, 1e-4, size=weight.shape).astype(np.float32)
                    bias[:] = -5.0
                else:
                    bias[:] = -30.0
            elif kind == "bbox":
                # Distances (left, top, right, bottom) from the anchor (the cell's top-left corner) in strides.
                bias[:] = np.tile([0.0, 0.0, 1.0, 1.0], anchors)
            else:
                bias[:] = np.tile((ARCFACE_TEMPLATE / 112.0).reshape(-1), anchors)
            w_name, b_name = f"{kind}{stride}.weight", f"{kind}{stride}.bias"
            shape_name = f"{kind}{stride}.shape"
            inits += [
                numpy_helper.from_array(weight, w_name),
                numpy_helper.from_array(bias, b_name),
                numpy_helper.from_array(np.array([1, -1, width], dtype=np.int64), shape_name),
            ]
            conv, perm, out = f"{kind}{stride}.conv", f"{kind}{stride}.nhwc", f"{kind}_{stride}"
            pre = f"{kind}{stride}.logits" if kind == "score" else out
            nodes += [
                helper.make_node("Conv", ["input.1", w_name, b_name], [conv], strides=[stride, stride]),
                helper.make_node("Transpose", [conv], [perm], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [perm, shape_name], [pre]),
            ]
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [pre], [out]))
            outputs[kind].append(out)
    # SCRFD reads its outputs by position: all scores, then all boxes, then all keypoints.
    graph_outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, "candidates", widths[kind]])
        for kind in ("score", "bbox", "kps")
        for name in outputs[kind]
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        graph_outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])


def _pooled_linear(rng: np.random.Generator, name: str, size: int, out_dim: int, sigmoid: bool, std: float):
    from onnx import TensorProto, helper, numpy_helper

    pooled = size // 8
    weight = rng.normal(0.0, std, size=(3 * pooled * pooled, out_dim)).astype(np.float32)
    output = "output" if not sigmoid else "logits"
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "proj.weight"], [output]),
    ]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["output"]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out_dim])],
        [numpy_helper.from_array(weight, "proj.weight")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])


def build_tiny_insightface_pack(
    root: str | Path,
    pack: str = "tiny",
    seed: int = 0,
    embedding_dim: int = 64,
    with_genderage: bool = True,
) -> Path:
    """Write a tiny insightface model pack to ``root/models/<pack>`` and return that folder.

    ``InsightFaceAnalyzer(root, pack=pack)`` (or insightface's ``FaceAnalysis(name=<folder>)``) loads it
    offline. Weights are seeded by ``seed``; see the module docstring for what each model computes.
    """
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
    rng = np.random.default_rng(seed)
    folder = Path(root) / "models" / pack
    folder.mkdir(parents=True, exist_ok=True)
    _save(_detector(rng), folder / DETECTOR_FILE)
    _save(
        _pooled_linear(rng, "tiny_arcface", 112, embedding_dim, sigmoid=False, std=0.05),
        folder / RECOGNIZER_FILE,
    )
    files = [DETECTOR_FILE, RECOGNIZER_FILE]
    if with_genderage:
        _save(_pooled_linear(rng, "tiny_genderage", 96, 3, sigmoid=True, std=0.02), folder / GENDERAGE_FILE)
        files.append(GENDERAGE_FILE)
    (folder / "README.json").write_text(
        json.dumps(
            {
                "note": "tiny model pack (hand-set detector, random recognition weights), for tests only",
                "seed": seed,
                "files": files,
            }
        )
    )
    return folder
