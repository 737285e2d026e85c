"""Benchmark manifests: the cases an evaluation runs (subject photos, scene, target ages).

A manifest is a JSON (or YAML) file::

    {
      "name": "my-families",                 # used in reports
      "task": "fusion",                      # "fusion" or "age"
      "description": "…",                    # optional
      "seed": 0,                             # optional; case i uses seed + 1000·i unless it sets its own
      "images_per_case": 1,                  # optional; images per case and configuration (seeds s, s+1, …)
      "cases": [
        {
          "id": "family-1",                  # unique, [A-Za-z0-9_.-]
          "scene": "at a picnic in a park",  # scene text; the group prompt is composed from it
          "prompt": null,                    # optional: a literal prompt instead (prompt fidelity is skipped)
          "seed": 7,                         # optional
          "ground_truth": "photos/picnic.jpg",  # optional: a real photo of these people in this scene
          "subjects": [                      # 1–6, in slot order
            {"image": "photos/anna.jpg", "target_age": 6, "label": "Anna"},
            {"image": "photos/ben.jpg", "face_index": 1, "target_age": 8},
            {"package": "insightface", "path": "data/images/t1.jpg", "face": 2}
          ]
        }
      ]
    }

A subject's photo is either ``image`` — a path, relative to the manifest's folder — with an optional
``face_index`` (which detected face to use, largest first; default the largest), or a file shipped inside an
installed Python package: ``package`` + ``path`` (inside the package) and ``face``, the index of the face
counted left to right; that face is cropped out of the photo. An ``age`` manifest needs a ``target_age`` for at
least one subject of each case; a subject without one keeps their own age. The built-in manifests (``fusion`` and ``age``) use only photos bundled with insightface and
scikit-image, so they run offline.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idglow.errors import InputError
from idglow.schedule import TASKS
from idglow.subjects import SubjectRef, validate_group

BUILTIN_DIR = Path(__file__).resolve().parent / "manifests"
BUILTIN_MANIFESTS = ("fusion", "age")
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class SubjectSpec:
    """Where one subject's photo comes from. Exactly one of ``image`` or (``package``, ``path``) is set."""

    image: str | None = None
    package: str | None = None
    path: str | None = None
    face: int | None = None
    face_index: int | None = None
    target_age: float | None = None
    label: str | None = None

    def describe(self) -> str:
        if self.image is not None:
            return self.image
        return f"{self.package}:{self.path}#face{self.face}"

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        return out


@dataclass(frozen=True)
class EvalCase:
    """One benchmark case: the people (in slot order), the scene or a fixed prompt, the seed and an optional
    ground-truth photo (a path relative to the manifest, or (package, path))."""

    id: str
    subjects: tuple[SubjectSpec, ...]
    scene: str = ""
    prompt: str | None = None
    seed: int = 0
    ground_truth: str | tuple[str, str] | None = None

    @property
    def num_subjects(self) -> int:
        return len(self.subjects)

    @property
    def target_ages(self) -> list[float | None]:
        return [s.target_age for s in self.subjects]


@dataclass
class Manifest:
    """A benchmark: its cases, the task they test and how many images each case gets; paths are relative to
    ``root``."""

    name: str
    task: str
    cases: list[EvalCase]
    description: str = ""
    images_per_case: int = 1
    root: Path = field(default_factory=Path.cwd)
    source: str = ""

    def select(self, limit: int | None = None) -> list[EvalCase]:
        """The first ``limit`` cases (all when None)."""
        if limit is None:
            return list(self.cases)
        if limit < 1:
            raise InputError(f"--limit {limit}: must be at least 1")
        return list(self.cases[:limit])


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise InputError(f"{where}: {message}")


def _number(value: Any, where: str, name: str, *, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    _require(ok and not isinstance(value, bool), where, f"{name} must be {'an integer' if integer else 'a number'}, "
             f"got {value!r}")
    return value


def _parse_subject(data: Any, where: str) -> SubjectSpec:
    _require(isinstance(data, dict), where, f"a subject must be an object, got {data!r}")
    known = {"image", "package", "path", "face", "face_index", "target_age", "label"}
    unknown = sorted(set(data) - known)
    _require(not unknown, where, f"unknown subject keys {unknown}; expected some of {sorted(known)}")
    has_image = data.get("image") is not None
    has_package = data.get("package") is not None or data.get("path") is not None
    _require(has_image != has_package, where, "give either 'image' or 'package' + 'path' + 'face'")
    if has_package:
        _require(bool(data.get("package")) and bool(data.get("path")), where, "'package' needs 'path' and vice versa")
        _require("face" in data, where, "a packaged photo needs 'face' (index of the face, left to right)")
        face = _number(data["face"], where, "face", integer=True)
        _require(face >= 0, where, f"face must be >= 0, got {face}")
    face_index = data.get("face_index")
    if face_index is not None:
        _number(face_index, where, "face_index", integer=True)
    age = data.get("target_age")
    if age is not None:
        _number(age, where, "target_age")
    label = data.get("label")
    _require(label is None or isinstance(label, str), where, f"label must be a string, got {label!r}")
    try:  # the per-person rules (age range, face index) are SubjectRef's
        ref = SubjectRef(image=data.get("image") or data.get("path"), target_age=age, label=label,
                         face_index=face_index)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    age = ref.target_age
    return SubjectSpec(
        image=data.get("image"), package=data.get("package"), path=data.get("path"), face=data.get("face"),
        face_index=face_index, target_age=None if age is None else float(age), label=label,
    )


def _ground_truth(value: Any, where: str) -> str | tuple[str, str] | None:
    """A case's ``ground_truth``: None, a path, or {"package": …, "path": …} → (package, path)."""
    if value is None or (isinstance(value, str) and value.strip()):
        return value
    _require(isinstance(value, dict) and set(value) == {"package", "path"}
             and all(isinstance(v, str) and v for v in value.values()), where,
             f"ground_truth must be a path or {{'package': ..., 'path': ...}}, got {value!r}")
    return value["package"], value["path"]


def parse_manifest(data: Any, root: str | Path = ".", source: str = "<manifest>") -> Manifest:
    """Validate a manifest's content (see the module docstring); errors name the file, case and field."""
    _require(isinstance(data, dict), source, "a manifest must be a JSON object with 'task' and 'cases'")
    task = data.get("task")
    _require(task in TASKS, source, f"task must be one of {', '.join(TASKS)}, got {task!r}")
    cases_data = data.get("cases")
    _require(isinstance(cases_data, list) and cases_data, source, "'cases' must be a non-empty list")
    base_seed = _number(data.get("seed", 0), source, "seed", integer=True)
    images = _number(data.get("images_per_case", 1), source, "images_per_case", integer=True)
    _require(images >= 1, source, f"images_per_case must be at least 1, got {images}")
    cases: list[EvalCase] = []
    seen: set[str] = set()
    for i, case in enumerate(cases_data):
        where = f"{source}, case {i + 1}"
        _require(isinstance(case, dict), where, f"a case must be an object, got {case!r}")
        case_id = case.get("id", f"case-{i + 1}")
        _require(isinstance(case_id, str) and bool(_ID_RE.match(case_id)), where,
                 f"id must match [A-Za-z0-9_.-]+, got {case_id!r}")
        _require(case_id not in seen, where, f"duplicate case id {case_id!r}")
        seen.add(case_id)
        where = f"{source}, case {case_id!r}"
        subjects = case.get("subjects")
        _require(isinstance(subjects, list), where, f"'subjects' must be a list, got {subjects!r}")
        specs = tuple(_parse_subject(s, f"{where}, subject {k + 1}") for k, s in enumerate(subjects))
        try:  # the group rules (how many people, the age task's target ages) are validate_group's
            validate_group(specs, task)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        scene = case.get("scene", "")
        prompt = case.get("prompt")
        _require(isinstance(scene, str), where, f"scene must be a string, got {scene!r}")
        _require(prompt is None or (isinstance(prompt, str) and prompt.strip()), where,
                 f"prompt must be a non-empty string, got {prompt!r}")
        seed = _number(case.get("seed", base_seed + 1000 * i), where, "seed", integer=True)
        cases.append(EvalCase(id=case_id, subjects=specs, scene=scene, prompt=prompt, seed=seed,
                              ground_truth=_ground_truth(case.get("ground_truth"), where)))
    name = data.get("name") or Path(source).stem
    return Manifest(name=str(name), task=task, cases=cases, description=str(data.get("description", "")),
                    images_per_case=images, root=Path(root), source=source)


def load_manifest(name_or_path: str | Path) -> Manifest:
    """A built-in manifest by name (``fusion``, ``age``) or a manifest file (.json, .yaml, .yml)."""
    text = str(name_or_path)
    path = BUILTIN_DIR / f"{text}.json" if text in BUILTIN_MANIFESTS else Path(text)
    if not path.is_file():
        raise InputError(
            f"benchmark {text!r} is neither a built-in manifest ({', '.join(BUILTIN_MANIFESTS)}) nor a file"
        )
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({err})") from None
    else:
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise InputError(f"{path}: not valid JSON ({err})") from None
    return parse_manifest(data, root=path.parent, source=str(path))


def package_file(package: str, path: str) -> Path:
    """A file shipped inside an installed package (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed; it holds the photo {path!r}")
    for location in spec.submodule_search_locations:
        candidate = Path(location, path)
        if candidate.is_file():
            return candidate
    raise InputError(f"package {package!r} has no file {path!r}")


class SubjectResolver:
    """Turns ``SubjectSpec``s into ``SubjectRef``s. Photos inside packages are decoded once, their faces
    detected once and sorted left to right; the chosen face is cropped (square, with margin)."""

    def __init__(self, analyzer, root: str | Path = ".", crop_size: int = 256):
        self.analyzer = analyzer
        self.root = Path(root)
        self.crop_size = crop_size
        self._photos: dict[Path, tuple[Any, list]] = {}

    def _faces_left_to_right(self, path: Path):
        if path not in self._photos:
            from idglow.faces.base import sort_largest_first
            from idglow.images import decode_image, to_rgb_array

            image = decode_image(path)
            faces = sort_largest_first(self.analyzer.detect(to_rgb_array(image)))
            self._photos[path] = (image, sorted(faces, key=lambda f: f.bbox[0]))
        return self._photos[path]

    def resolve(self, spec: SubjectSpec):
        from PIL import Image

        from idglow.images import decode_image
        from idglow.samples import crop_box

        if spec.image is not None:
            path = Path(spec.image)
            path = path if path.is_absolute() else self.root / path
            return SubjectRef(image=decode_image(path), target_age=spec.target_age, label=spec.label,
                              face_index=spec.face_index)
        path = package_file(spec.package, spec.path)
        image, faces = self._faces_left_to_right(path)
        if spec.face >= len(faces):
            raise InputError(
                f"{spec.describe()}: the photo has {len(faces)} face(s) for this face analyzer; face {spec.face} "
                "does not exist"
            )
        crop = image.crop(crop_box(faces[spec.face].bbox, *image.size))
        crop = crop.resize((self.crop_size, self.crop_size), Image.LANCZOS)
        return SubjectRef(image=crop, target_age=spec.target_age, label=spec.label)

    def resolve_ground_truth(self, case: EvalCase):
        """The case's ground-truth photo (PIL image), or None when it has none."""
        from idglow.images import decode_image

        if case.ground_truth is None:
            return None
        if isinstance(case.ground_truth, tuple):
            return decode_image(package_file(*case.ground_truth))
        path = Path(case.ground_truth)
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise InputError(f"case {case.id!r}: ground_truth {case.ground_truth!r} is not a file ({path})")
        return decode_image(path)

    def resolve_case(self, case: EvalCase) -> list:
        return [self.resolve(s) for s in case.subjects]
