"""The inputs of ``idglow data build-sft``: which person appears in which photo, at which recorded age.

Three forms, all read into a list of :class:`Appearance` (one person in one photo):

- a flat folder of group photos: nobody is named, every detected face is its own person (appearances are made
  after detection, by the builder);
- a folder of per-person folders (``people/anna/*.jpg``, ``people/ben/*.jpg``): the folder name is the person,
  each photo shows that person (the largest face, unless the same photo also sits in another person's folder);
- a manifest, JSON or CSV, with photo paths relative to the manifest's folder. JSON::

      {"people": {"anna": ["anna_2019.jpg", {"photo": "anna_1996.jpg", "age": 6}], "ben": ["ben.jpg"]},
       "groups": [{"photo": "family.jpg", "prompt": "a family at the beach",
                   "people": ["anna", {"person": "ben", "age": 41, "face": 0}]}]}

  ``people`` lists each person's photos (a path, or an object with ``photo`` and optional ``age`` in years and
  ``face``, the index of the person's face counted left to right); ``groups`` lists photos of several people,
  who must be named in ``people``. Any entry object may say how the prompts describe the person:
  ``"describe_as": "woman"`` (woman, man, girl, boy; the face analyzer's gender estimate otherwise), e.g.
  ``{"photo": "anna_2019.jpg", "describe_as": "woman"}``; it holds for every photo of that person. CSV: one
  appearance per line, columns ``person,photo`` and optional ``age,face,prompt,describe_as``; a photo named on
  several lines is a group photo.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idglow.errors import InputError
from idglow.subjects import parse_describe_as

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Appearance:
    """One person in one photo. ``age``: the recorded age in years (None: estimate it); ``face``: the person's
    face index among the photo's faces counted left to right (None: find it); ``prompt``: the photo's caption;
    ``describe_as``: how the prompts describe the person (see :data:`idglow.subjects.DESCRIBE_AS`; None: the
    face analyzer's estimate)."""

    photo: Path
    person: str
    age: float | None = None
    face: int | None = None
    prompt: str | None = None
    describe_as: str | None = None


def list_photos(folder: Path) -> list[Path]:
    """The JPEG/PNG/WebP files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def person_folders(root: Path) -> list[Appearance]:
    """Appearances from one folder per person (the folder's name is the person); [] when ``root`` holds photos
    itself (a flat folder of group photos) or no sub-folder with photos."""
    if list_photos(root):
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        found.extend(Appearance(photo, folder.name) for photo in list_photos(folder))
    return found


def load_manifest(path: str | Path) -> list[Appearance]:
    """Appearances from a JSON or CSV manifest (see the module docstring); ``InputError`` naming the bad entry
    for a missing photo, an unknown person, a bad age or face index, or a person listed twice in one photo."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    if path.suffix.lower() == ".json":
        found = _json_appearances(path)
    elif path.suffix.lower() == ".csv":
        found = _csv_appearances(path)
    else:
        raise InputError(f"manifest {path} must be a .json or .csv file")
    if not found:
        raise InputError(f"manifest {path} lists no photos")
    _check_appearances(found, path)
    return found


def _json_appearances(path: Path) -> list[Appearance]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"manifest {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("people"), dict):
        raise InputError(f"manifest {path} needs a \"people\" object: {{\"people\": {{\"NAME\": [\"photo.jpg\"]}}}}")
    base = path.parent
    found = []
    for person, photos in data["people"].items():
        if not isinstance(photos, list):
            raise InputError(f"manifest {path}: people.{person} must be a list of photos")
        for entry in photos:
            item = {"photo": entry} if isinstance(entry, str) else entry
            found.append(_appearance(item, person, base, f"people.{person}"))
    for g, group in enumerate(data.get("groups") or []):
        where = f"groups[{g}]"
        if not isinstance(group, dict) or not isinstance(group.get("people"), list):
            raise InputError(f"manifest {path}: {where} needs \"photo\" and a \"people\" list")
        for entry in group["people"]:
            item = {"person": entry} if isinstance(entry, str) else dict(entry)
            name = str(item.get("person"))
            if name not in data["people"]:
                raise InputError(f"manifest {path}: {where} names unknown person {name!r}; add them to \"people\" "
                                 f"(known: {', '.join(data['people']) or 'none'})")
            item.setdefault("photo", group.get("photo"))
            item.setdefault("prompt", group.get("prompt"))
            found.append(_appearance(item, name, base, where))
    return found


def _csv_appearances(path: Path) -> list[Appearance]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"person", "photo"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"manifest {path} lacks the column(s) {', '.join(sorted(missing))} "
                             "(header: person,photo[,age][,face][,prompt][,describe_as])")
        found = []
        for line, row in enumerate(reader, start=2):
            item = {k: (v.strip() if isinstance(v, str) else v) or None for k, v in row.items() if k}
            if not item.get("person"):
                raise InputError(f"manifest {path} line {line}: the person is empty")
            found.append(_appearance(item, item["person"], path.parent, f"line {line}"))
    return found


def _appearance(item: dict[str, Any], person: str, base: Path, where: str) -> Appearance:
    if not isinstance(item, dict) or not item.get("photo"):
        raise InputError(f"manifest {where}: an entry of {person!r} has no photo")
    photo = base / str(item["photo"])
    if not photo.is_file():
        raise InputError(f"manifest {where}: photo {item['photo']!r} of {person!r} does not exist ({photo})")
    if photo.suffix.lower() not in PHOTO_SUFFIXES:
        raise InputError(f"manifest {where}: photo {item['photo']!r} is not a JPEG/PNG/WebP file")
    return Appearance(photo, str(person), _age(item.get("age"), person, where), _face(item.get("face"), person, where),
                      item.get("prompt") or None, parse_describe_as(item.get("describe_as"), f"manifest {where}: "))


def _age(value: Any, person: str, where: str) -> float | None:
    if value is None:
        return None
    try:
        age = float(value)
    except (TypeError, ValueError):
        age = math.nan
    if isinstance(value, bool) or not 0.0 <= age <= 120.0:
        raise InputError(f"manifest {where}: age {value!r} of {person!r} must be a number of years from 0 to 120")
    return age


def _face(value: Any, person: str, where: str) -> int | None:
    if value is None:
        return None
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = -1
    if isinstance(value, bool) or index < 0 or str(index) != str(value).strip():
        raise InputError(f"manifest {where}: face {value!r} of {person!r} must be a whole number >= 0 "
                         "(the face's place counted from the left, starting at 0)")
    return index


def _check_appearances(found: list[Appearance], path: Path) -> None:
    seen: set[tuple[Path, str]] = set()
    faces: dict[tuple[Path, int], str] = {}
    for a in found:
        key = (a.photo.resolve(), a.person)
        if key in seen:
            raise InputError(f"manifest {path}: {a.person!r} is listed twice for photo {a.photo.name}")
        seen.add(key)
        if a.face is not None:
            other = faces.setdefault((key[0], a.face), a.person)
            if other != a.person:
                raise InputError(f"manifest {path}: {other!r} and {a.person!r} both have face {a.face} in "
                                 f"photo {a.photo.name}")
