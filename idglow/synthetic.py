"""A synthetic identity world, small enough to train on a CPU, for proving that the trainers learn.

Images live directly in a FLUX-like latent space (C × S × S, no VAE). A *person* is an identity code
z ∈ R^k (unit norm) rendered as a "face" glyph: channel 0 is the silhouette (+1 inside an ellipse, −1
outside) and channels 1..C−1 carry the texture Σ_i z_i·P_i, where the P_i are fixed random low-resolution
patterns stretched over the face box. The *age-like transform* changes the structure (an adult face is tall,
a child's face is small and round) and keeps the code. A group scene puts 2–4 people at random positions.

``SyntheticFaceAnalyzer`` is the identity encoder of this world: it finds faces by their silhouette and
recovers the code by least squares against the stretched patterns, so its embeddings are meaningful
analytically (no training). Like a real face embedding, the embedding also carries a little of the face's
structure (``structure_weight``), so that an adult reference and its child rendering are similar but not
identical. ``oracle_scores`` / ``oracle_preference`` judge generated scenes the way annotators would.

The "prompt" of a scene is given directly as embeddings, which stand in for the text encoders of FLUX. With
``prompt="tokens"`` (the first version of this world) token j carries slot j's exact box, size, child flag, slot
one-hot and grid cell, which gives the layout and the age away. With ``prompt="words"`` (v2) token j is the sum
of a few word vectors from a fixed random vocabulary: an order word ("first", "second", … from the left), a
coarse position ("left" / "middle" / "right", "upper" / "lower") and an age word ("child" / "adult"); where
exactly a face goes and how large it is are the model's to decide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from idglow.faces.base import Face, l2_normalize
from idglow.faces.binding import PLACE_MIN_IOU, GroupBinding, bind_group, places_by_boxes

logger = logging.getLogger(__name__)

ADULT_AGE = 35.0
CHILD_AGE = 6.0


@dataclass
class SceneSpec:
    """One group scene: identity codes (N, k), per-person child flag, boxes (x1, y1, x2, y2) in latent pixels
    (end exclusive), in slot order."""

    codes: np.ndarray
    child: list[bool]
    boxes: list[tuple[int, int, int, int]]

    @property
    def num_subjects(self) -> int:
        return len(self.child)

    @property
    def target_ages(self) -> list[float]:
        return [CHILD_AGE if c else ADULT_AGE for c in self.child]


@dataclass
class SyntheticWorld:
    """The world's constants. Everything random is drawn from ``seed``, so two worlds with the same
    arguments are the same world.

    Args:
        size: latent side S (even, FLUX packs 2×2 latent pixels per token).
        channels: latent channels C (≥ 2).
        code_dim: identity code size k.
        pattern_size: resolution of the texture patterns P_i before stretching.
        adult_shape / child_shape: (height, width) of a face box in latent pixels.
        min_people / max_people: people per scene.
        embedding_dim: size of the identity embedding (the adapter's ``id_dim``).
        structure_weight: how much face structure the embedding carries (0 = pure code).
        texture_amplitude: scale of the face texture.
        prompt_dim / pooled_dim / max_slots: shape of the prompt embeddings (joint_attention_dim,
            pooled_projection_dim, and the number of slot tokens).
        layout: ``"random"`` puts faces anywhere (at least 2 pixels apart); ``"grid"`` splits the scene into
            ``grid`` = (rows, cols) cells and centres each person in a distinct random cell, people in reading
            order (slot 0 is the top-left-most person), the way a prompt lists "person 1 on the left, ...".
            The prompt then also names each person's cell.
        prompt: ``"tokens"`` (exact layout features per slot) or ``"words"`` (order, coarse position and age
            words only; people are then listed left to right, and slot order is left-to-right order).
        position_bins: (columns, rows) of the coarse position words of ``prompt="words"``.
    """

    size: int = 32
    channels: int = 4
    code_dim: int = 8
    pattern_size: int = 3
    adult_shape: tuple[int, int] = (10, 6)
    child_shape: tuple[int, int] = (6, 6)
    min_people: int = 2
    max_people: int = 4
    embedding_dim: int = 64
    structure_weight: float = 0.35
    texture_amplitude: float = 1.0
    prompt_dim: int = 32
    pooled_dim: int = 16
    max_slots: int = 6
    layout: str = "random"
    grid: tuple[int, int] = (2, 2)
    prompt: str = "tokens"
    position_bins: tuple[int, int] = (3, 2)
    seed: int = 0
    patterns: np.ndarray = field(init=False, repr=False)
    embed_basis: np.ndarray = field(init=False, repr=False)
    prompt_basis: np.ndarray = field(init=False, repr=False)
    pooled_basis: np.ndarray = field(init=False, repr=False)
    word_vectors: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.size % 2:
            raise ValueError(f"size={self.size} must be even (FLUX packs 2x2 latent pixels per token)")
        if self.channels < 2:
            raise ValueError(f"channels={self.channels} must be >= 2 (silhouette + texture)")
        if not (1 <= self.min_people <= self.max_people <= self.max_slots):
            raise ValueError(f"need 1 <= min_people={self.min_people} <= max_people={self.max_people} <= "
                             f"max_slots={self.max_slots}")
        if self.layout not in ("random", "grid"):
            raise ValueError(f"layout={self.layout!r}; expected 'random' or 'grid'")
        if self.prompt not in ("tokens", "words"):
            raise ValueError(f"prompt={self.prompt!r}; expected 'tokens' or 'words'")
        if min(self.position_bins) < 1:
            raise ValueError(f"position_bins={self.position_bins} must be at least 1 column and 1 row")
        if self.layout == "grid":
            rows, cols = self.grid
            if self.max_people > rows * cols:
                raise ValueError(f"max_people={self.max_people} does not fit a {rows}x{cols} grid")
            for h, w in (self.adult_shape, self.child_shape):
                if h + 1 > self.size // rows or w + 1 > self.size // cols:
                    raise ValueError(f"a {h}x{w} face does not fit a {self.size // rows}x{self.size // cols} "
                                     "cell with a 1-pixel margin")
        if self.embedding_dim < self.code_dim + 1:
            raise ValueError(f"embedding_dim={self.embedding_dim} must be > code_dim={self.code_dim}")
        rng = np.random.default_rng(self.seed)
        p = self.pattern_size
        self.patterns = rng.standard_normal((self.code_dim, self.channels - 1, p, p)).astype(np.float32)
        q, _ = np.linalg.qr(rng.standard_normal((self.embedding_dim, self.code_dim + 1)))
        self.embed_basis = q.astype(np.float32)  # orthonormal columns
        slot_features = self.max_slots + 6 + self.num_cells
        self.prompt_basis = (rng.standard_normal((slot_features, self.prompt_dim)) /
                             np.sqrt(slot_features)).astype(np.float32)
        self.pooled_basis = (rng.standard_normal((self.max_slots + 1, self.pooled_dim))).astype(np.float32)
        # drawn last, so that the worlds of ``prompt="tokens"`` stay what they were
        self.word_vectors = (rng.standard_normal((len(self.vocabulary), self.prompt_dim)) /
                             np.sqrt(3.0)).astype(np.float32)

    # --- identities and rendering -----------------------------------------------------------------------

    @property
    def num_cells(self) -> int:
        """Grid cells a prompt can name (0 for the random layout)."""
        return self.grid[0] * self.grid[1] if self.layout == "grid" else 0

    def cell_box(self, cell: int, child: bool) -> tuple[int, int, int, int]:
        """The box of a face centred in grid cell ``cell`` (row-major)."""
        rows, cols = self.grid
        ch, cw = self.size // rows, self.size // cols
        h, w = self.face_shape(child)
        r, c = divmod(cell, cols)
        y, x = r * ch + (ch - h) // 2, c * cw + (cw - w) // 2
        return (x, y, x + w, y + h)

    def cell_of(self, box) -> int:
        """The grid cell holding the centre of ``box``."""
        rows, cols = self.grid
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        r = min(int(cy // (self.size // rows)), rows - 1)
        c = min(int(cx // (self.size // cols)), cols - 1)
        return r * cols + c

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def random_codes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n unit-norm identity codes (n, k)."""
        z = rng.standard_normal((n, self.code_dim)).astype(np.float32)
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    def face_shape(self, child: bool) -> tuple[int, int]:
        return self.child_shape if child else self.adult_shape

    def silhouette(self, h: int, w: int) -> np.ndarray:
        """(h, w) boolean ellipse filling the box."""
        return _silhouette(h, w)

    def texture_basis(self, h: int, w: int) -> np.ndarray:
        """Patterns stretched to an (h, w) box: (k, C−1, h, w)."""
        return _stretched(self.patterns.tobytes(), self.patterns.shape, h, w)

    def render_face(self, code: np.ndarray, child: bool = False, shape: tuple[int, int] | None = None) -> np.ndarray:
        """A face glyph (C, h, w): silhouette in channel 0, texture of ``code`` in the others."""
        h, w = shape or self.face_shape(child)
        sil = self.silhouette(h, w)
        tex = np.tensordot(np.asarray(code, dtype=np.float32), self.texture_basis(h, w), axes=1)
        out = np.empty((self.channels, h, w), dtype=np.float32)
        out[0] = np.where(sil, 1.0, -1.0)
        out[1:] = self.texture_amplitude * tex * sil
        return out

    def background(self) -> np.ndarray:
        bg = np.zeros(self.latent_shape, dtype=np.float32)
        bg[0] = -1.0
        return bg

    def sample_layout(self, child: list[bool], rng: np.random.Generator, gap: int = 2,
                      tries: int = 200) -> list[tuple[int, int, int, int]]:
        """Random non-overlapping boxes (x1, y1, x2, y2), at least ``gap`` pixels apart (random layout), or
        faces centred in distinct random grid cells, in reading order (grid layout)."""
        if self.layout == "grid":
            if len(child) > self.num_cells:
                raise ValueError(f"cannot place {len(child)} faces in {self.num_cells} grid cells")
            cells = sorted(rng.choice(self.num_cells, size=len(child), replace=False).tolist())
            return [self.cell_box(cell, c) for cell, c in zip(cells, child)]
        for _ in range(tries):
            boxes: list[tuple[int, int, int, int]] = []
            for c in child:
                h, w = self.face_shape(c)
                for _ in range(tries):
                    x = int(rng.integers(1, self.size - w))
                    y = int(rng.integers(1, self.size - h))
                    box = (x, y, x + w, y + h)
                    if all(_apart(box, other, gap) for other in boxes):
                        boxes.append(box)
                        break
                else:
                    break
            if len(boxes) == len(child):
                if self.prompt == "words":  # prompts list people left to right
                    boxes.sort(key=lambda b: (b[0] + b[2], b[1] + b[3]))
                return boxes
        raise ValueError(f"cannot place {len(child)} faces in a {self.size}x{self.size} scene")

    def sample_scene(self, rng: np.random.Generator, num_subjects: int | None = None,
                     child: list[bool] | None = None, codes: np.ndarray | None = None) -> SceneSpec:
        """A random scene: 2–4 people (or ``num_subjects``), adults unless ``child`` says otherwise."""
        n = num_subjects or (len(child) if child is not None else
                             int(rng.integers(self.min_people, self.max_people + 1)))
        child = list(child) if child is not None else [False] * n
        codes = self.random_codes(n, rng) if codes is None else np.asarray(codes, dtype=np.float32)
        boxes = self.sample_layout(child, rng)
        if self.layout != "grid" and self.prompt == "words":  # the boxes were put in left-to-right order
            child = [(y2 - y1, x2 - x1) == tuple(self.child_shape) for x1, y1, x2, y2 in boxes]
        return SceneSpec(codes=codes, child=child, boxes=boxes)

    def render_scene(self, spec: SceneSpec) -> np.ndarray:
        """The scene's latent (C, S, S)."""
        out = self.background()
        for code, c, (x1, y1, x2, y2) in zip(spec.codes, spec.child, spec.boxes):
            face = self.render_face(code, c, shape=(y2 - y1, x2 - x1))
            sil = face[0] > 0
            region = out[:, y1:y2, x1:x2]
            region[:, sil] = face[:, sil]
        return out

    def age_transform(self, spec: SceneSpec, child: list[bool]) -> SceneSpec:
        """The same people and centres with a new structure per person (identity codes unchanged)."""
        boxes = []
        for (x1, y1, x2, y2), c in zip(spec.boxes, child):
            if self.layout == "grid":
                boxes.append(self.cell_box(self.cell_of((x1, y1, x2, y2)), c))
                continue
            h, w = self.face_shape(c)
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            nx = int(np.clip(cx - w // 2, 0, self.size - w))
            ny = int(np.clip(cy - h // 2, 0, self.size - h))
            boxes.append((nx, ny, nx + w, ny + h))
        return SceneSpec(codes=spec.codes.copy(), child=list(child), boxes=boxes)

    # --- the "prompt" -------------------------------------------------------------------------------------

    @property
    def vocabulary(self) -> list[str]:
        """The words of ``prompt="words"``: order words, coarse position words, age words, and "end"."""
        cols, rows = self.position_bins
        order = ["first", "second", "third", "fourth", "fifth", "sixth"][: self.max_slots]
        order += [f"person{j + 1}" for j in range(len(order), self.max_slots)]
        return [*order, *_bin_words(cols, ("left", "middle", "right")), *_bin_words(rows, ("upper", "centre", "lower")),
                "child", "adult", "end"]

    def position_words(self, box) -> tuple[str, str]:
        """Coarse (horizontal, vertical) position words of a box's centre."""
        cols, rows = self.position_bins
        cx, cy = (box[0] + box[2]) / 2 / self.size, (box[1] + box[3]) / 2 / self.size
        horizontal = _bin_words(cols, ("left", "middle", "right"))[min(int(cx * cols), cols - 1)]
        vertical = _bin_words(rows, ("upper", "centre", "lower"))[min(int(cy * rows), rows - 1)]
        return horizontal, vertical

    def prompt_words(self, spec: SceneSpec) -> list[list[str]]:
        """The words of each person's token in a ``prompt="words"`` prompt, in slot order."""
        order = self.vocabulary[: self.max_slots]
        return [[order[j], *self.position_words(box), "child" if c else "adult"]
                for j, (box, c) in enumerate(zip(spec.boxes, spec.child))]

    def encode_prompt(self, spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
        """Prompt embeddings (max_slots + 1, prompt_dim) and pooled embedding (pooled_dim,).

        ``prompt="tokens"``: token j describes slot j exactly (its position, size, whether it is shown as a
        child and, in the grid layout, its cell). ``prompt="words"``: token j is the sum of the vectors of
        ``prompt_words(spec)[j]``. The last token is a constant. Stands in for "the first person from the left,
        a child, ..." through a text encoder.
        """
        pooled = self.pooled_basis[spec.num_subjects]
        if self.prompt == "words":
            index = {w: i for i, w in enumerate(self.vocabulary)}
            emb = np.zeros((self.max_slots + 1, self.prompt_dim), dtype=np.float32)
            for j, words in enumerate(self.prompt_words(spec)):
                emb[j] = self.word_vectors[[index[w] for w in words]].sum(0)
            emb[-1] = self.word_vectors[index["end"]]
            return emb * 3.0, pooled.copy()
        feats = np.zeros((self.max_slots + 1, self.max_slots + 6 + self.num_cells), dtype=np.float32)
        for j, ((x1, y1, x2, y2), c) in enumerate(zip(spec.boxes, spec.child)):
            s = float(self.size)
            feats[j, j] = 1.0
            feats[j, self.max_slots:self.max_slots + 6] = [(x1 + x2) / (2 * s), (y1 + y2) / (2 * s),
                                                           (x2 - x1) / s, (y2 - y1) / s, 1.0 if c else -1.0, 1.0]
            if self.num_cells:
                feats[j, self.max_slots + 6 + self.cell_of((x1, y1, x2, y2))] = 1.0
        feats[-1, self.max_slots + 5] = -1.0
        return feats @ self.prompt_basis * 3.0, pooled.copy()

    # --- references and embeddings ------------------------------------------------------------------------

    def reference(self, code: np.ndarray, child: bool = False) -> np.ndarray:
        """A reference "portrait" of one person: the face glyph on background with a 1-pixel border."""
        face = self.render_face(code, child)
        h, w = face.shape[1:]
        out = np.zeros((self.channels, h + 2, w + 2), dtype=np.float32)
        out[0] = -1.0
        out[:, 1:-1, 1:-1] = np.where(face[0:1] > 0, face, out[:, 1:-1, 1:-1])
        return out

    def code_embedding(self, code: np.ndarray, child: bool = False) -> np.ndarray:
        """The embedding the analyzer gives a clean face of ``code`` (exact, no rendering)."""
        h, w = self.face_shape(child)
        return self._embed(np.asarray(code, dtype=np.float32), h / w)

    def _embed(self, code_estimate: np.ndarray, aspect: float) -> np.ndarray:
        z = l2_normalize(code_estimate)
        a_adult = self.adult_shape[0] / self.adult_shape[1]
        a_child = self.child_shape[0] / self.child_shape[1]
        structure = (2.0 * (aspect - a_child) / max(a_adult - a_child, 1e-6)) - 1.0  # adult +1, child −1
        feat = np.concatenate([z, [self.structure_weight * float(np.clip(structure, -1.5, 1.5))]])
        return l2_normalize(self.embed_basis @ feat.astype(np.float32))

    def structure_age(self, bbox) -> float:
        """The age a face's structure reads as: its box's aspect ratio mapped linearly from the child shape
        (``CHILD_AGE``) to the adult shape (``ADULT_AGE``), clipped to [0, 2·ADULT_AGE]."""
        x1, y1, x2, y2 = bbox
        aspect = (y2 - y1) / max(x2 - x1, 1e-6)
        a_adult = self.adult_shape[0] / self.adult_shape[1]
        a_child = self.child_shape[0] / self.child_shape[1]
        t = (aspect - a_child) / max(a_adult - a_child, 1e-6)
        return float(np.clip(CHILD_AGE + t * (ADULT_AGE - CHILD_AGE), 0.0, 2 * ADULT_AGE))

    def is_child_shape(self, bbox) -> bool:
        x1, y1, x2, y2 = bbox
        aspect = (y2 - y1) / max(x2 - x1, 1e-6)
        a_adult = self.adult_shape[0] / self.adult_shape[1]
        a_child = self.child_shape[0] / self.child_shape[1]
        return aspect < (a_adult + a_child) / 2


@lru_cache(maxsize=256)
def _silhouette(h: int, w: int) -> np.ndarray:
    yy = (np.arange(h) + 0.5) / h * 2 - 1
    xx = (np.arange(w) + 0.5) / w * 2 - 1
    return (yy[:, None] ** 2 + xx[None, :] ** 2) <= 1.0 + 1e-6


@lru_cache(maxsize=256)
def _stretched(buf: bytes, shape: tuple[int, ...], h: int, w: int) -> np.ndarray:
    patterns = torch.from_numpy(np.frombuffer(buf, dtype=np.float32).reshape(shape).copy())
    k, c, p, _ = patterns.shape
    out = F.interpolate(patterns.reshape(k * c, 1, p, p), size=(h, w), mode="bilinear", align_corners=True)
    return out.reshape(k, c, h, w).numpy()


def _bin_words(n: int, words: tuple[str, str, str]) -> list[str]:
    """Names of n coarse bins along one axis (1: the middle word; 2: the outer words; 3: all three)."""
    if n > 3:
        return [f"{words[0]}{i}" for i in range(n)]
    return {1: [words[1]], 2: [words[0], words[2]], 3: list(words)}[n]


def _apart(a, b, gap: int) -> bool:
    return (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


class SyntheticFaceAnalyzer:
    """The identity encoder of a ``SyntheticWorld``, with the ``FaceAnalyzer`` interface.

    ``detect(latent)`` takes a latent (C, H, W) array/tensor, finds connected silhouette regions
    (channel 0 > threshold) of at least ``min_area`` pixels and returns faces, largest first, whose
    embedding is the world's embedding of the least-squares code estimate. ``age`` is the structure read
    from the box (child or adult).
    """

    def __init__(self, world: SyntheticWorld, threshold: float = 0.0, min_area: int = 8):
        self.world = world
        self.threshold = threshold
        self.min_area = min_area
        self.embedding_dim = world.embedding_dim

    def detect(self, image: Any) -> list[Face]:
        from scipy import ndimage

        latent = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if latent.ndim != 3 or latent.shape[0] != self.world.channels:
            raise ValueError(f"expected a latent of shape ({self.world.channels}, H, W), got {latent.shape}")
        labels, count = ndimage.label(latent[0] > self.threshold)
        faces = []
        for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            region = labels[sl] == idx
            if int(region.sum()) < self.min_area:
                continue
            y1, y2, x1, x2 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            crop = latent[:, y1:y2, x1:x2]
            code = self.code_of_crop(crop)
            bbox = (float(x1), float(y1), float(x2), float(y2))
            face = Face(bbox=bbox, score=float(region.mean()), embedding=self.world._embed(code, (y2 - y1) / (x2 - x1)),
                        age=CHILD_AGE if self.world.is_child_shape(bbox) else ADULT_AGE)
            face.code = code  # type: ignore[attr-defined]
            faces.append(face)
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def code_of_crop(self, crop: np.ndarray) -> np.ndarray:
        """Least-squares code estimate of a face crop (C, h, w) whose box is the face's box."""
        _, h, w = crop.shape
        basis = self.world.texture_basis(h, w) * self.world.silhouette(h, w)  # (k, C−1, h, w)
        a = basis.reshape(basis.shape[0], -1).T * self.world.texture_amplitude
        b = (crop[1:] * self.world.silhouette(h, w)).reshape(-1)
        code, *_ = np.linalg.lstsq(a, b, rcond=None)
        return code.astype(np.float32)

    def embed_reference(self, reference: np.ndarray) -> np.ndarray:
        """Embedding of the largest face of a reference portrait."""
        faces = self.detect(reference)
        if not faces:
            raise ValueError("no face found in the synthetic reference")
        return faces[0].embedding


def scene_match(analyzer: SyntheticFaceAnalyzer, latent, spec: SceneSpec,
                reference_embeddings: np.ndarray | None = None) -> tuple[GroupBinding, list[Face]]:
    """Bind the faces found in ``latent`` to the scene's people (their reference embeddings, or the clean
    embeddings of the scene's codes and structures): the Hungarian identity match, and the face in each
    person's prompted box (IoU >= ``PLACE_MIN_IOU``) with whom it shows (``bind_group``, no threshold)."""
    faces = analyzer.detect(latent)
    if reference_embeddings is None:
        reference_embeddings = np.stack([analyzer.world.code_embedding(z, c) for z, c in zip(spec.codes, spec.child)])
    return bind_group(faces, list(reference_embeddings), boxes=spec.boxes, min_similarity=0.0), faces


def layout_errors(faces: list[Face], spec: SceneSpec, min_iou: float = PLACE_MIN_IOU) -> tuple[int, int]:
    """(absent, surplus): requested people with no face where the scene puts them, and faces that stand
    where nobody was requested, judged by position alone (``places_by_boxes``: Hungarian match of boxes on
    IoU >= ``min_iou``), whoever the faces look like."""
    placed = sum(1 for f in places_by_boxes(faces, spec.boxes, min_iou) if f is not None)
    return spec.num_subjects - placed, len(faces) - placed


def layout_accuracy(world: SyntheticWorld, faces: list[Face], spec: SceneSpec) -> float:
    """Fraction of requested people for whom a face stands in the coarse region the prompt names
    (``position_words``), each face counted once, whoever it looks like: Σ over regions of min(requested,
    found) / requested."""
    from collections import Counter

    wanted = Counter(world.position_words(b) for b in spec.boxes)
    found = Counter(world.position_words(f.bbox) for f in faces)
    return sum(min(n, found[key]) for key, n in wanted.items()) / max(spec.num_subjects, 1)


def _code_similarity(face: Face | None, code: np.ndarray) -> float:
    """Cosine of a face's recovered identity code with a person's code (0 for no face)."""
    if face is None:
        return 0.0
    return float(l2_normalize(face.code) @ l2_normalize(code))  # type: ignore[attr-defined]


def _background_noise(analyzer: SyntheticFaceAnalyzer, latent, faces: list[Face]) -> float:
    """Mean |deviation| of the pixels outside every face box from the clean background."""
    lat = latent.detach().float().cpu().numpy() if isinstance(latent, torch.Tensor) else np.asarray(latent)
    fg = np.zeros(lat.shape[1:], dtype=bool)
    for f in faces:
        x1, y1, x2, y2 = (int(v) for v in f.bbox)
        fg[y1:y2, x1:x2] = True
    bg_dev = np.abs(lat - analyzer.world.background())[:, ~fg]
    return float(bg_dev.mean()) if bg_dev.size else 0.0


def scene_metrics(analyzer: SyntheticFaceAnalyzer, latent, spec: SceneSpec,
                  reference_embeddings: np.ndarray | None = None) -> dict[str, Any]:
    """Identity, binding and structure of a generated scene against its request.

    Returns ``identity`` (mean Hungarian-matched embedding similarity, wherever the faces stand; 0 for missing
    people), ``identity_in_place`` / ``place_similarity`` (the embedding similarity of the face in each
    person's prompted box, 0 for an empty place), ``code_similarity`` (matched face) and
    ``place_code_similarity`` (face in place) per slot (cosine of the recovered code, structure-free),
    ``in_place`` per slot and ``swaps`` (people whose box holds another member's face, ``bind_group``),
    ``structure_ok`` per slot (matched face has the requested child/adult structure), ``missing``/``extra``
    counts of the identity match, ``absent``/``surplus`` counts by position alone (``layout_errors``),
    ``layout_accuracy``, ``age_error`` per slot (|structure age of the matched face − target age| in years,
    None when the person is missing), ``background_noise``, ``match`` and ``binding``.
    """
    binding, faces = scene_match(analyzer, latent, spec, reference_embeddings)
    match = binding.match
    absent, surplus = layout_errors(faces, spec)
    matched = [None if i is None else faces[i] for i in match.face_of_slot]
    placed = [None if i is None else faces[i] for i in binding.place_face]
    world = analyzer.world
    place_sim = [0.0 if s is None else float(s) for s in binding.place_similarity]
    return {
        "identity": match.mean_similarity,
        "similarity": list(match.similarity),
        "identity_in_place": float(np.mean(place_sim)) if place_sim else 0.0,
        "place_similarity": place_sim,
        "code_similarity": [_code_similarity(f, z) for f, z in zip(matched, spec.codes)],
        "place_code_similarity": [_code_similarity(f, z) for f, z in zip(placed, spec.codes)],
        "in_place": list(binding.in_place),
        "swaps": int(binding.swaps or 0),
        "structure_ok": [f is not None and world.is_child_shape(f.bbox) == c for f, c in zip(matched, spec.child)],
        "missing": len(match.missing),
        "extra": len(match.extra),
        "absent": absent,
        "surplus": surplus,
        "layout_accuracy": layout_accuracy(world, faces, spec),
        "age_error": [None if f is None else abs(world.structure_age(f.bbox) - t)
                      for f, t in zip(matched, spec.target_ages)],
        "background_noise": _background_noise(analyzer, latent, faces),
        "match": match,
        "binding": binding,
    }


# --- the oracle ---------------------------------------------------------------------------------------------


def oracle_scores(analyzer: SyntheticFaceAnalyzer, latent, spec: SceneSpec) -> dict[str, Any]:
    """Per-dimension quality of a generated scene, as an ideal annotator would judge it: identity is read in
    each person's place, so a face drawn in another person's box counts against both people.

    overall = mean identity in place + 0.25·(fraction with the requested structure) − 0.25·(absent people +
    surplus faces); identity_j = the similarity of the face in slot j's prompted box (IoU >= 0.25; 0 when the
    place is empty); artifacts = −(absent + surplus), by position alone (a face in its place that resembles
    nobody is an identity failure, not an artifact); texture = −background noise; swaps is reported.
    """
    m = scene_metrics(analyzer, latent, spec)
    n = spec.num_subjects
    defects = m["absent"] + m["surplus"]
    overall = m["identity_in_place"] + 0.25 * float(np.mean(m["structure_ok"])) - 0.25 * defects
    return {
        "overall": overall,
        "identity": list(m["place_similarity"]),
        "texture": -m["background_noise"],
        "artifacts": -float(defects),
        "swaps": m["swaps"],
        "num_subjects": n,
    }


def oracle_preference(scores_0: dict[str, Any], scores_1: dict[str, Any], *, tie: float = 0.02,
                      clear: float = 0.1, max_slots: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Labels for a pair, in the DPO dimension layout (overall, texture, artifacts, identity_0..).

    Returns (preference, strength), both (3 + max_slots,): preference +1 when image 0 is better, −1 when
    image 1 is, 0 for a tie (|difference| < ``tie``) or a slot that does not exist; strength 1.0 (clear,
    |difference| ≥ ``clear``) or 0.5 (slight).
    """
    d = 3 + max_slots
    pref = np.zeros(d, dtype=np.float32)
    strength = np.zeros(d, dtype=np.float32)
    diffs = [scores_0["overall"] - scores_1["overall"], scores_0["texture"] - scores_1["texture"],
             scores_0["artifacts"] - scores_1["artifacts"]]
    diffs += [a - b for a, b in zip(scores_0["identity"], scores_1["identity"])]
    for i, diff in enumerate(diffs[:d]):
        if abs(diff) >= tie:
            pref[i] = 1.0 if diff > 0 else -1.0
            strength[i] = 1.0 if abs(diff) >= clear else 0.5
    return pref, strength


# --- a second scorer that never labels ---------------------------------------------------------------------


def judge_scores(analyzer: SyntheticFaceAnalyzer, latent, spec: SceneSpec) -> dict[str, Any]:
    """An independent judge of a generated scene, for win rates of a model trained on ``oracle_preference``
    labels: it shares none of the oracle's choices beyond reading faces and places.

    Each requested person is looked for where the request puts them (the face in their box, IoU >= 0.25, each
    face serving one person; ``places_by_boxes``), never by an identity match; identity is the cosine of the
    recovered identity *code* with the person's code (structure-free), not the embedding; absent people score
    0; no structure bonus. ``swaps`` counts people whose box holds a face whose code is closer to another
    member's code than to theirs. ``overall`` = mean per-person code similarity − 0.25·(faces claimed by
    nobody).
    """
    faces = analyzer.detect(latent)
    places = places_by_boxes(faces, spec.boxes)
    codes = np.stack([l2_normalize(z) for z in spec.codes])
    per_person, swaps = [], 0
    for j, face_index in enumerate(places):
        if face_index is None:
            per_person.append(0.0)
            continue
        sims = codes @ l2_normalize(faces[face_index].code)  # type: ignore[attr-defined]
        per_person.append(float(sims[j]))
        swaps += int(int(np.argmax(sims)) != j)
    unclaimed = len(faces) - sum(1 for p in places if p is not None)
    return {"overall": float(np.mean(per_person)) - 0.25 * unclaimed, "identity": per_person,
            "unclaimed": unclaimed, "swaps": swaps}
