"""Handlers of the Generate tab: named widget values → a typed request → one service call → named widget values.

Handlers take and return values by widget name (the tab maps names to components), never positional lists.
Photos are checked one at a time: a good photo's people are kept while a bad photo is named on its own; photos
chosen before the consent box is ticked wait, and are processed when it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from annotation.generation.gpu_queue import raise_if_left
from annotation.generation.reference_faces import DetectedSubject, no_face_message
from annotation.generation.request import GenerationRequest
from annotation.privacy.uploads import UploadLimits, UploadRegistry, decode_upload, discard_upload
from annotation.privacy.visitors import new_visitor_id
from annotation.ui.errors import notice_html, ui_errors
from idglow.errors import InputError, NoFaceError
from idglow.subjects import DESCRIBE_AS, MAX_SUBJECTS, SubjectRef, parse_describe_as

NUM_CARDS = MAX_SUBJECTS
EXAMPLE_SCENE = "a family picnic in a sunny park"
SCORE_HEADERS = ["Image", "Identity (1 = same face)"]
UPLOAD_HINT = "Choose 1–6 portraits (one per person) or one group photo, or try the example family."
LEAVE_TO_MODEL = "auto"  # the card's "Describe as" value that leaves it to the model
DESCRIBE_CHOICES = [("Auto", LEAVE_TO_MODEL), *((word.capitalize(), word) for word in DESCRIBE_AS)]


@dataclass
class Person:
    """One person card: the detected face and what the visitor typed for it."""

    key: str  # the upload it came from ("example:..." for the example family)
    subject: DetectedSubject
    label: str = ""
    target_age: float | None = None
    weight: float = 1.0
    describe_as: str | None = None


@dataclass
class PhotoStatus:
    """One chosen photo: how many people it gave, or why it gave none, or that it waits for consent."""

    key: str
    name: str
    people: int = 0
    error: str | None = None
    pending: bool = False  # chosen before consent: processed when the box is ticked


@dataclass
class VisitorState:
    """Per browser session, kept on the server (gr.State)."""

    visitor_id: str = field(default_factory=new_visitor_id)
    people: list[Person] = field(default_factory=list)
    photos: list[PhotoStatus] = field(default_factory=list)
    generation_ids: list[int] = field(default_factory=list)
    shown_crops: list[Any] = field(default_factory=list)  # every face crop ever put on a card ("Delete my data")
    problem: str = ""  # what the last Generate press needs fixed first (shown under the button), or ""


MAX_SHOWN_CROPS = 120  # crops remembered per session for "Delete my data" (the oldest are forgotten first)


def remember_shown(state: VisitorState) -> None:
    """Add the crops now on the cards to the crops this session has shown (each crop once). The example
    family's crops are nobody's data (every visitor is shown the same served copies) and are never deleted."""
    known = {id(crop) for crop in state.shown_crops}
    state.shown_crops += [p.subject.crop for p in state.people
                          if id(p.subject.crop) not in known and not p.key.startswith("example:")]
    del state.shown_crops[:-MAX_SHOWN_CROPS]


@dataclass
class CardValues:
    """What one person card holds: name, optional target age, ID weight, how to describe the person."""

    label: str | None = None
    target_age: float | None = None
    weight: float | None = 1.0
    describe_as: str | None = None


@dataclass
class GenerateForm:
    """The Generate tab's settings, by name."""

    task: str = "fusion"
    scene: str = ""
    prompt: str = ""
    consent: bool = False
    seed: float | None = -1
    steps: float | None = None
    guidance: float = 3.5
    id_scale: float = 1.0
    window_lo: float = 0.0
    window_hi: float = 1.0
    id_profile: str | None = "flat"
    num_images: float = 2
    size: float | None = None
    model_versions: list[str] | str | None = None
    cards: list[CardValues] = field(default_factory=list)


def card_names(i: int) -> dict[str, str]:
    """Widget names of card ``i``."""
    return {k: f"{k}_{i}" for k in ("card", "crop", "label", "age", "describe", "weight", "remove")}


def cards_from(values: dict[str, Any]) -> list[CardValues]:
    """The cards' values out of a name → value mapping."""
    return [CardValues(values.get(f"label_{i}"), values.get(f"age_{i}"), values.get(f"weight_{i}"),
                       values.get(f"describe_{i}")) for i in range(NUM_CARDS)]


def _number(value: Any, what: str, slot: int) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"person {slot + 1}: {what} {value!r} is not a number") from None
    return None if number != number else number  # NaN from an empty field


def _sentence(text: str) -> str:
    """A message as a sentence: capital first letter."""
    return text[:1].upper() + text[1:]


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def _seed(value: Any) -> int | None:
    """A seed widget value: empty or negative means "pick one at random"."""
    seed = _int_or_none(value)
    return None if seed is None or seed < 0 else seed


def _paths(files: Any) -> list[str]:
    items = files if isinstance(files, list) else [files] if files else []
    return [f if isinstance(f, str) else getattr(f, "name", None) or f.get("path") for f in items]


def _score_text(label: str, score: float | None, age: float | None, target: float | None = None,
                in_place: bool | None = None, instead: str | None = None) -> str:
    """"Mum: 0.62 (looks 7, target 6)"; a person whose face is missing reads "face not found"; where the prompt
    gives places, "Mum: Dad's face is in their place" when another member's face stands there."""
    if instead is not None:
        return f"{label}: {instead}'s face is in their place" + ("" if score is None else f" (own face {score:.2f} elsewhere)")
    if score is None:
        return f"{label}: face not found"
    if in_place is False:
        return f"{label}: {score:.2f}, not in their place"
    if age is None:
        return f"{label}: {score:.2f}"
    return f"{label}: {score:.2f} (looks {age:.0f}" + (f", target {target:.0f})" if target is not None else ")")


def _scores_text(cand, labels: list[str], targets: list[float | None]) -> str:
    """One candidate's per-person identity scores (``_score_text``), joined with " · "."""
    n = len(labels)
    ages = cand.estimated_ages or [None] * n
    in_place = getattr(cand, "in_place", None) or [None] * n
    instead = [None if j is None else labels[j] for j in (getattr(cand, "instead", None) or [None] * n)]
    return " · ".join(_score_text(*person) for person in zip(labels, cand.identity_scores, ages, targets, in_place, instead))


def _eta(seconds: float) -> str:
    return f"about {seconds:.0f} s" if seconds < 90 else f"about {seconds / 60:.0f} min"


def _lenient(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number


class GenerateHandlers:
    """The Generate tab's event handlers on a ``GenerationService`` (or anything with its methods)."""

    def __init__(self, service, limits: UploadLimits = UploadLimits(), *, default_steps: int = 28,
                 default_size: int = 1024, uploads: UploadRegistry | None = None):
        self.service = service
        self.uploads = uploads if uploads is not None else UploadRegistry()  # the app passes the one it guards
        self.limits = limits
        self.default_steps = default_steps
        self.default_size = default_size
        self._seconds_per_run: float | None = None  # moving average, for the queue's wait estimate

    # -- photos and person cards ---------------------------------------------------------------------------
    @staticmethod
    def _remember(state: VisitorState, cards: list[CardValues]) -> None:
        """Keep what the visitor typed on the cards (so that adding or removing a photo does not lose it)."""
        for person, card in zip(state.people, cards):
            person.label = str(card.label or "").strip()
            person.target_age = _lenient(card.target_age)
            weight = _lenient(card.weight)
            person.weight = 1.0 if weight is None else weight
            person.describe_as = card.describe_as if card.describe_as in DESCRIBE_AS else None

    def _process(self, state: VisitorState, path: str, group: bool) -> PhotoStatus:
        name = Path(path).name
        try:
            image = decode_upload(path, self.limits, name=name)
            found = self.service.people_in_photo(name, image, group=group)
        except NoFaceError:
            return PhotoStatus(path, name, error=no_face_message(name))
        except InputError as err:
            return PhotoStatus(path, name, error=str(err))
        finally:
            discard_upload(path, self.uploads)
        state.people.extend(Person(path, subject) for subject in found)
        return PhotoStatus(path, name, people=len(found))

    def _new_photo(self, state: VisitorState, path: str, group: bool, consent: bool) -> PhotoStatus:
        name = Path(path).name
        if not consent:
            return PhotoStatus(path, name, pending=True)
        if len(state.people) >= NUM_CARDS:  # never decode more than a group can use
            discard_upload(path, self.uploads)
            return PhotoStatus(path, name, error=f"{name}: not used; at most {NUM_CARDS} people fit in one photo")
        return self._process(state, path, group)

    @ui_errors
    def photos(self, state: VisitorState | None, files: Any, consent: bool, cards: list[CardValues]) -> dict:
        """The upload list or the consent box changed: process new photos (after consent), drop the people of
        removed photos (and the example family once photos are chosen), keep everything else. Returns the cards,
        the photo status and the state by name."""
        state = state or VisitorState()
        self._remember(state, cards)
        paths = _paths(files)
        order = {key: i for i, key in enumerate(paths)}
        keep_examples = not paths  # the visitor's own photos replace the example family
        state.people = [p for p in state.people if p.key in order or (keep_examples and p.key.startswith("example:"))]
        known = {photo.key: photo for photo in state.photos if photo.key in order}
        group = len(paths) == 1 and not state.people
        photos = []
        for path in paths:
            status = known.get(path)
            if status is None or status.pending:
                status = self._new_photo(state, path, group, consent)
            photos.append(status)
        state.photos = photos
        state.people.sort(key=lambda p: order.get(p.key, -1))
        return self.view(state)

    @ui_errors
    def remove_person(self, state: VisitorState | None, cards: list[CardValues], index: int) -> dict:
        """Remove the person of card ``index`` (the other cards keep their values)."""
        state = state or VisitorState()
        self._remember(state, cards)
        if 0 <= index < len(state.people):
            removed = state.people.pop(index)
            for photo in state.photos:
                if photo.key == removed.key:
                    photo.people -= 1
        return self.view(state)

    @ui_errors
    def example_family(self, state: VisitorState | None) -> dict:
        """Replace the people with the example family (bundled sample portraits) and suggest a scene."""
        state = state or VisitorState()
        found = self.service.example_people()
        state.people = [Person(f"example:{s.source}", s) for s in found]
        state.photos = []
        view = self.view(state, note="Example family loaded: press **Generate**, or upload your own photos.")
        return {**view, "files": None, "scene": EXAMPLE_SCENE}

    def view(self, state: VisitorState, note: str = "") -> dict:
        """Cards, photo status and state, by widget name."""
        remember_shown(state)
        out: dict[str, Any] = {"state": state, "photo_status": note or _photo_status(state)}
        for i in range(NUM_CARDS):
            n = card_names(i)
            person = state.people[i] if i < len(state.people) else None
            if person is None:
                out.update({n["card"]: gr.update(visible=False), n["crop"]: None, n["label"]: "",
                            n["age"]: None, n["weight"]: 1.0, n["describe"]: LEAVE_TO_MODEL})
                continue
            out.update({n["card"]: gr.update(visible=True), n["crop"]: person.subject.crop,
                        n["label"]: gr.update(value=person.label, placeholder=f"Person {i + 1}"),
                        n["age"]: person.target_age, n["weight"]: person.weight,
                        n["describe"]: person.describe_as or LEAVE_TO_MODEL})
        return out

    # -- request and generation ----------------------------------------------------------------------------
    def _subjects(self, state: VisitorState | None, cards: list[CardValues]) -> list[SubjectRef]:
        if state is None or not state.people:
            raise InputError("Add 1–6 people first: upload portraits, or press \"Try an example family\".")
        out = []
        for slot, person in enumerate(state.people):
            card = cards[slot] if slot < len(cards) else CardValues(person.label, person.target_age, person.weight,
                                                                    person.describe_as)
            label = str(card.label or "").strip() or None
            age = _number(card.target_age, "target age", slot)
            weight = _number(card.weight, "ID weight", slot)
            try:
                out.append(SubjectRef(person.subject.crop, target_age=age, weight=1.0 if weight is None else weight,
                                      label=label, face_index=person.subject.face_index,
                                      describe_as=parse_describe_as(card.describe_as)))
            except InputError as err:
                message = str(err) if label else f"person {slot + 1}: {err}"  # a label already names them
                raise InputError(message) from None
        return out

    def request(self, state: VisitorState, form: GenerateForm) -> GenerationRequest:
        """The typed request of these widget values (examples need no consent: they are bundled photos)."""
        versions = form.model_versions or []
        versions = [versions] if isinstance(versions, str) else list(versions)
        size = _int_or_none(form.size) or self.default_size
        examples_only = bool(state.people) and all(p.key.startswith("example:") for p in state.people)
        return GenerationRequest(
            subjects=self._subjects(state, form.cards), task=form.task, scene=form.scene or "",
            prompt=form.prompt or "", seed=_seed(form.seed),
            num_inference_steps=_int_or_none(form.steps) or self.default_steps,
            guidance_scale=float(form.guidance), id_scale=float(form.id_scale),
            id_window=(float(form.window_lo), float(form.window_hi)), id_profile=form.id_profile or "flat",
            num_images=int(form.num_images),
            height=size, width=size, model_versions=versions, visitor_id=state.visitor_id,
            consent=bool(form.consent) or examples_only,
        )

    @ui_errors
    def write_prompt(self, state: VisitorState | None, form: GenerateForm) -> dict:
        """Write the prompt from the people and the scene (the prompt box can then be edited)."""
        prompt = self.service.compose_prompt(self._subjects(state, form.cards), form.task, form.scene or "")
        source = "vision-language model" if prompt.source == "vlm" else "template"
        return {"prompt": prompt.text, "status": f"Prompt written by the {source}; edit it as you like."}

    def _progress(self, progress):
        def on_step(done: int, total: int) -> None:
            raise_if_left()  # the visitor closed the page: stop here (the generator cancels the call)
            if progress is not None:
                progress((done, total), desc="Generating", unit="steps")

        def on_wait(ahead: int) -> None:
            if progress is not None:
                wait = f" · {_eta(ahead * self._seconds_per_run)} wait" if self._seconds_per_run else ""
                progress(0.0, desc=f"In the queue: {ahead} ahead of you{wait}")

        return on_step, on_wait

    @ui_errors
    def generate(self, state: VisitorState | None, form: GenerateForm, progress=None, page: str | None = None) -> dict:
        """Gallery, identity scores, seed, status, download files and state by name. ``progress`` is a
        ``gr.Progress`` (or any callable taking ``((done, total), desc=..., unit=...)``). ``page``: the page's
        session; when it closes (:meth:`page_closed`) the generation stops and its place is freed."""
        state = state or VisitorState()
        with self.service.queue.reserved(state.visitor_id, page=page):  # a full queue refuses before any work on the request
            try:
                request = self.request(state, form)
                on_step, on_wait = self._progress(progress)
                started = time.monotonic()
                result = self.service.generate(request, on_step=on_step, on_wait=on_wait)
            except InputError as err:  # a mistake in the form: said in words, nothing covered
                state.problem = _sentence(str(err))
                return {"status": state.problem, "seed_used": "", "state": state}
        state.problem = ""
        took = time.monotonic() - started
        self._seconds_per_run = took if self._seconds_per_run is None else 0.7 * self._seconds_per_run + 0.3 * took
        state.generation_ids = list(result.generation_ids)
        gallery, rows = _results(result, request)
        withheld = sum(c.image is None for c in result.candidates)
        status = f"{len(gallery)} image(s). Prompt ({result.prompt_source}): {result.prompt}"
        if withheld:
            status += f"\n\n{withheld} image(s) withheld by the safety checker."
        downloads = result.downloads
        return {
            "gallery": gallery,
            "scores": {"headers": SCORE_HEADERS, "data": rows},
            "seed_used": f"Used seed: **{result.seed}** (image i uses seed + i − 1)", "status": status,
            "pngs": [str(p) for p in downloads.images] if downloads else None,
            "archive": gr.update(value=str(downloads.archive) if downloads else None, visible=downloads is not None),
            "state": state,
        }

    def page_closed(self, request: gr.Request) -> None:
        """The page of ``request`` was closed (``Blocks.unload``): stop its generations and free their places."""
        if request is not None and request.session_hash:
            self.service.queue.page_closed(request.session_hash)

    @staticmethod
    def run_note(state: VisitorState | None) -> str:
        """The line under the Generate button after a press: what to fix first, or nothing."""
        return notice_html(state.problem if state is not None else "", problem=True)

    # -- visitor data --------------------------------------------------------------------------------------
    @ui_errors
    def add_to_pool(self, state: VisitorState | None) -> dict:
        """Put the visitor's latest results (those of the last Generate) in the annotation pool (they are then
        kept)."""
        if state is None or not state.generation_ids:
            return {"status": "Generate some images first: then they can be added to the annotation pool."}
        n = self.service.add_to_pool(state.visitor_id, state.generation_ids)
        return {"status": f"Thank you: {n} image(s) of your latest Generate added to the annotation pool (they are "
                          "kept for research; earlier results are not added)."}

    @ui_errors
    def delete_my_data(self, state: VisitorState | None) -> dict:
        """Remove this visitor's generations, uploads and files; returns cleared widgets and a fresh state."""
        fresh = VisitorState()
        cleared = {**self.view(fresh), "files": None, "gallery": [], "pngs": None,
                   "archive": gr.update(value=None, visible=False), "scores": {"headers": SCORE_HEADERS, "data": []}}
        if state is None:
            return {**cleared, "status": "Nothing of yours is stored."}
        remember_shown(state)  # crops of photos removed from the list go too, not only those on the page
        result = self.service.delete_visitor_data(state.visitor_id, shown=list(state.shown_crops))
        msg = (f"Deleted {result.generations} generation(s), {result.reference_photos} uploaded photo(s) and "
               f"{result.files} file(s).")
        kept = getattr(result, "kept_in_pool", 0)
        if kept:
            msg += (f" {kept} generation(s) you added to the annotation pool stay there, no longer linked to you: "
                    "annotators have already voted on them, and their votes are kept.")
        return {**cleared, "status": msg}


def _photo_status(state: VisitorState) -> str:
    """One line per problem, then what is ready."""
    lines = []
    pending = [p.name for p in state.photos if p.pending]
    if pending:
        lines.append(f"**Tick the consent box** to process {len(pending)} photo(s): {', '.join(pending)}.")
    for photo in state.photos:
        if photo.error:
            lines.append(f"⚠ {photo.error}. Remove it from the list with its ×; the other photos are kept.")
    n = len(state.people)
    if n > NUM_CARDS:
        lines.append(f"{n} people found; at most {NUM_CARDS} can be in one photo: remove {n - NUM_CARDS}.")
    elif n:
        uploads = any(not p.key.startswith("example:") for p in state.people)
        lines.append(f"{n} {'person' if n == 1 else 'people'} ready · target age is optional (blank: keeps their age)"
                     + (" · photo metadata (EXIF, GPS) removed." if uploads else "."))
    elif not state.photos:
        lines.append(UPLOAD_HINT)
    return "\n\n".join(lines)


def _results(result, request: GenerationRequest) -> tuple[list, list[list[str]]]:
    """Gallery items and score rows: missing faces read "face not found", never 0."""
    labels = [s.label or f"Person {i}" for i, s in enumerate(request.subjects, start=1)]
    targets = [s.target_age for s in request.subjects]
    several = len({c.model_version for c in result.candidates}) > 1
    gallery, rows = [], []
    for k, cand in enumerate(result.candidates, start=1):
        name = f"#{k} · seed {cand.seed}" + (f" · {cand.model_version}" if several else "")
        if cand.image is None:
            rows.append([name, cand.withheld or "withheld"])
            continue
        scores = _scores_text(cand, labels, targets)
        rows.append([name, scores])
        gallery.append((cand.image, f"{name} · {scores}"))
    return gallery, rows
