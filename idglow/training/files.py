"""Datasets on disk: the SFT folder made by ``idglow data build-sft`` and the DPO preference export folder
(Parquet from ``idglow export``)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from idglow import preferences
from idglow.errors import InputError
from idglow.faces.base import face_backend_name
from idglow.subjects import MAX_SUBJECTS
from idglow.training.buckets import make_buckets, nearest_bucket
from idglow.training.caching import caption_encoder_prompt, encoder_pair, export_clip_text
from idglow.training.data import DEFAULT_MISSING_STRENGTH, preference_strengths

logger = logging.getLogger(__name__)

METADATA = "metadata.jsonl"


def _image_tensor(image, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
    """Resize-and-centre-crop a PIL image to (w, h); returns pixels in [−1, 1] (3, h, w) and the crop window
    in normalised source coordinates (x0, y0, x1, y1)."""
    from PIL import Image

    w, h = size
    sw, sh = image.size
    scale = max(w / sw, h / sh)
    rw, rh = max(w, round(sw * scale)), max(h, round(sh * scale))
    resized = image.convert("RGB").resize((rw, rh), Image.BICUBIC)
    left, top = (rw - w) // 2, (rh - h) // 2
    crop = resized.crop((left, top, left + w, top + h))
    arr = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return arr, (left / rw, top / rh, (left + w) / rw, (top + h) / rh)


def _remap_box(box, window) -> tuple[float, float, float, float] | None:
    """A normalised box in the source image → normalised box in the crop (None if it falls outside)."""
    if box is None:
        return None
    x0, y0, x1, y1 = window
    bw, bh = x1 - x0, y1 - y0
    nb = [(box[0] - x0) / bw, (box[1] - y0) / bh, (box[2] - x0) / bw, (box[3] - y0) / bh]
    nb = [min(max(v, 0.0), 1.0) for v in nb]
    return None if nb[2] <= nb[0] or nb[3] <= nb[1] else tuple(nb)


class SFTFolderDataset(Dataset):
    """The folder written by ``idglow data build-sft``: ``metadata.jsonl`` (one group photo per line with its
    prompt, task and per-slot faces: normalised box, reference crops and their embeddings) and the images.

    Each item is resized to its aspect bucket; each slot's identity embedding is one entry of its
    ``embeddings`` (the mean over its other-photo references, or a same-photo crop or its mirror) drawn from
    ``seed`` and the index.
    """

    def __init__(self, root: str | Path, resolution: int = 1024, seed: int = 0):
        self.root = Path(root)
        meta = self.root / METADATA
        if not meta.is_file():
            raise InputError(f"{self.root} is not an SFT folder: {METADATA} is missing (make one with "
                             f"`idglow data build-sft --photos DIR --out {self.root}`)")
        self.rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
        if not self.rows:
            raise InputError(f"{meta} lists no photos")
        self.buckets = make_buckets(resolution)
        self.bucket_ids = [nearest_bucket(r["width"], r["height"], self.buckets) for r in self.rows]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from idglow.images import decode_image

        row = self.rows[index]
        pixels, window = _image_tensor(decode_image(self.root / row["image"]), self.buckets[self.bucket_ids[index]])
        rng = random.Random(f"{self.seed}:{index}")
        embeds = [rng.choice(s["embeddings"]) for s in row["subjects"]]
        return {
            "pixel_values": pixels,
            "prompt": row["prompt"],
            "clip_prompt": encoder_pair(caption_encoder_prompt(row))[0],  # CLIP's text, as at inference
            "task": row.get("task", "fusion"),
            "target_ages": [s.get("target_age") for s in row["subjects"]],
            "id_embeds": torch.tensor(np.asarray(embeds, dtype=np.float32)),
            "face_boxes": [_remap_box(s["bbox"], window) for s in row["subjects"]],
        }


def _export_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted((path / "data").glob("*.parquet")) if (path / "data").is_dir() else sorted(path.glob("*.parquet"))
    if not files:
        raise InputError(f"no Parquet files in {path} (expected an `idglow export` folder or a .parquet file)")
    return files


def _pair_label(value) -> float:
    """Export label for image 0 (1, 0, 0.5, or None) → +1 / −1 / 0."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return 0.0
    return 1.0 if value > 0.5 else (-1.0 if value < 0.5 else 0.0)


def caption_positions(caption: str, labels, n: int) -> list[int] | None:
    """Each person's place (1 = leftmost) as the caption states it (``idglow.faces.scoring.prompt_positions``):
    by the people's labels where the caption names them after their position markers, else in slot order when
    it names positions 1..n (the template writer's order); None when it does not place everyone."""
    from idglow.faces.scoring import prompt_positions

    if labels and len(labels) == n and all(labels):
        found = prompt_positions(caption, list(labels))
        if found is not None:
            return found
    return prompt_positions(caption, None, n)


def identity_boxes(faces: dict[str, Any], n: int, positions: list[int] | None) -> list:
    """Each person's identity region in one candidate (pixel boxes, None where there is none), from its
    stored faces record (``{"matches": FaceMatch.to_dict(), "faces": [Face.to_dict(), ...]}``, optionally
    ``"binding": GroupBinding.to_dict()``).

    When the prompt gives places — a recorded binding with places, or ``positions`` and enough faces to read
    them left to right — person j's region is the face in j's own place (None when the place is empty), so a
    face drawn in another person's place is judged where j should stand. Otherwise it is j's Hungarian match."""
    from idglow.faces.base import Face
    from idglow.faces.binding import places_by_order

    binding = faces.get("binding") or {}
    if binding.get("places") and binding.get("place_bboxes") is not None:
        return _padded(binding["place_bboxes"], n)
    detected = [Face(bbox=tuple(f["bbox"])) for f in faces.get("faces") or []]
    places = None if positions is None else places_by_order(detected, positions)
    if places is not None:
        return [None if i is None else detected[i].bbox for i in places]
    return _padded((faces.get("matches") or {}).get("bboxes") or [], n)


def _padded(boxes: list, n: int) -> list:
    return list(boxes[:n]) + [None] * (n - len(boxes[:n]))


def row_preferences(row: dict[str, Any]) -> np.ndarray:
    """(D,) preference of one export row in the layout of ``preferences.dpo_dimensions()``: +1 where image 0
    is preferred, −1 where image 1 is, 0 for a tie or no label. Each dimension reads its question's export
    column (one value per person for a per-person question); the primary question's label counts only where
    ``has_label``."""
    dims = preferences.dpo_dimensions(MAX_SUBJECTS)
    main = preferences.primary()
    pref = np.zeros(len(dims), dtype=np.float32)
    for d, dim in enumerate(dims):
        value = row.get(dim.question.column)
        if dim.slot is not None:
            value = list(value or [])[dim.slot] if dim.slot < len(value or []) else None
        if dim.question is main and not row.get("has_label", True):
            value = None
        pref[d] = _pair_label(value)
    return pref


class PreferenceExportDataset(Dataset):
    """DPO pairs from the preference export folder of ``idglow export`` (Pick-a-Pic v2 columns plus group
    columns), or one of its Parquet files.

    Needs the export made with images (``jpg_0``/``jpg_1``). Each person's identity embedding is the one the
    app stored (``reference_embeddings``, made by ``face_backend``); only rows without stored embeddings, or
    with embeddings of another backend than ``face_analyzer``, embed the ``reference_images`` again with
    ``face_analyzer`` (largest face). Per-person identity regions come from ``faces_0``/``faces_1``: the face in
    each person's own place when the caption places people (``identity_boxes``), else the per-slot matches.
    Rows without an overall label (both bad) keep their other dimensions.
    Strengths per dimension: ``idglow.training.data.preference_strengths`` (``missing_strength`` where a row
    gives none).
    """

    def __init__(self, source: str | Path, face_analyzer=None, *, resolution: int = 1024, split: str | None = "train",
                 use_agreement_as_strength: bool = False, missing_strength: float = DEFAULT_MISSING_STRENGTH):
        import pyarrow.parquet as pq

        from idglow.images import decode_image

        source_str = str(source)
        if "://" in source_str:
            raise InputError(f"train_data {source_str!r} is a database URL; the trainer reads an export folder: run "
                             f"`idglow export --db {source_str} --out DIR --with-images` first, or "
                             f"`idglow train-from-db --db {source_str} ...`")
        rows: list[dict[str, Any]] = []
        for f in _export_files(Path(source)):
            rows.extend(pq.read_table(str(f)).to_pylist())
        if split is not None and rows and "split" in rows[0]:
            rows = [r for r in rows if r["split"] == split]
        rows = [r for r in rows if r.get("jpg_0") is not None and r.get("jpg_1") is not None]
        if not rows:
            raise InputError(f"{source_str}: no rows with images for split={split!r} (export with images)")
        self.buckets = make_buckets(resolution)
        self.use_agreement = use_agreement_as_strength
        self.face_analyzer = face_analyzer
        self.redetected = 0  # rows whose references were embedded again
        self.missing_strength = float(missing_strength)
        self.items: list[dict[str, Any]] = []
        self.bucket_ids: list[int] = []
        for r in rows:
            img0 = decode_image(r["jpg_0"])
            self.items.append({"row": r, "id_embeds": self._reference_embeddings(r)})
            self.bucket_ids.append(nearest_bucket(img0.width, img0.height, self.buckets))

    def _reference_embeddings(self, row: dict[str, Any]) -> np.ndarray:
        """(N, id_dim): the stored embeddings when usable, else the references embedded again."""
        stored = row.get("reference_embeddings")
        backend = row.get("face_backend")
        wanted = None if self.face_analyzer is None else face_backend_name(self.face_analyzer)
        if stored and len(stored) == row["num_subjects"] and (wanted is None or backend == wanted):
            return np.asarray(stored, dtype=np.float32)
        return self._detect_references(row)

    def _detect_references(self, row: dict[str, Any]) -> np.ndarray:
        from idglow.images import decode_image

        if self.face_analyzer is None:
            raise InputError(f"row {row['ranking_id']}: the export holds no identity embeddings for its people; "
                             "pass a face analyzer to embed the reference images")
        refs = row.get("reference_images") or []
        if len(refs) != row["num_subjects"]:
            raise InputError(f"row {row['ranking_id']}: {len(refs)} reference images for "
                             f"{row['num_subjects']} subjects (export with images)")
        embeds = []
        for slot, ref in enumerate(refs):
            faces = self.face_analyzer.detect(np.asarray(decode_image(ref)))
            if not faces or faces[0].embedding is None:
                raise InputError(f"row {row['ranking_id']}: no face found in the reference of subject {slot + 1}")
            embeds.append(max(faces, key=lambda f: f.area).embedding)
        self.redetected += 1
        return np.stack(embeds).astype(np.float32)

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def _boxes(faces_json: str, width: int, height: int, n: int, window, positions) -> list:
        out = []
        for b in identity_boxes(json.loads(faces_json or "{}"), n, positions):
            out.append(None if b is None else _remap_box((b[0] / width, b[1] / height, b[2] / width, b[3] / height),
                                                         window))
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        from idglow.images import decode_image

        item = self.items[index]
        r = item["row"]
        size = self.buckets[self.bucket_ids[index]]
        n = r["num_subjects"]
        sample: dict[str, Any] = {"prompt": r["caption"] or "", "clip_prompt": export_clip_text(r), "task": r["task"],
                                  "id_embeds": item["id_embeds"], "target_ages": r.get("target_ages"),
                                  "pair_id": r["ranking_id"]}
        positions = caption_positions(r.get("caption") or "", r.get("subject_labels"), n)
        for i in (0, 1):
            img = decode_image(r[f"jpg_{i}"])
            pixels, window = _image_tensor(img, size)
            sample[f"pixel_values_{i}"] = pixels
            sample[f"face_boxes_{i}"] = self._boxes(r[f"faces_{i}"], img.width, img.height, n, window, positions)
        sample["preference"] = torch.from_numpy(row_preferences(r))
        sample["strength"] = torch.from_numpy(preference_strengths(r, use_agreement=self.use_agreement,
                                                                   missing=self.missing_strength))
        return sample
