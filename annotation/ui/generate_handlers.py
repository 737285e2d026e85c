"""Handlers of the Generate tab: widget values → a typed request → one service call → widget values."""

from __future__ import annotations

import io
import json
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import gradio as gr

from annotation.generation import GenerationRequest, SubjectInput
from annotation.privacy import UploadLimits, decode_upload, discard_upload, new_visitor_id
from annotation.ui.errors import ui_errors
from idglow.subjects import MAX_SUBJECTS

SUBJECT_COLUMNS = ["person", "label", "target age", "ID weight"]
DOWNLOAD_MAX_AGE_S = 3600


@dataclass
class VisitorState:
    """Per browser session, kept on the server (gr.State)."""

    visitor_id: str = field(default_factory=new_visitor_id)
    subjects: list = field(default_factory=list)  # DetectedSubject
    generation_ids: list[int] = field(default_factory=list)


@dataclass
class GenerateForm:
    """The Generate tab's widget values by name (the tab maps each field to its component)."""

    subjects_table: Any
    task: str
    scene: str
    prompt: str
    consent: bool
    seed: float | None
    steps: float | None
    guidance: float
    id_scale: float
    window_lo: float
    window_hi: float
    num_images: float
    size: float
    model_versions: list[str] | str | None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _rows(table: Any) -> list[list[Any]]:
    if table is None:
        return []
    if hasattr(table, "values") and hasattr(table, "columns"):  # a pandas DataFrame
        return table.values.tolist()
    if isinstance(table, dict) and "data" in table:
        return list(table["data"])
    return [list(r) for r in table]


def _number(value: Any, what: str, slot: int) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"person {slot + 1}: {what} {value!r} is not a number", print_exception=False) from None
    return None if number != number else number  # NaN from an empty cell


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def _seed(value: Any) -> int | None:
    """A seed widget value: empty or negative means "pick one at random"."""
    seed = _int_or_none(value)
    return None if seed is None or seed < 0 else seed


class GenerateHandlers:
    def __init__(self, service, limits: UploadLimits = UploadLimits(), *, default_steps: int = 28,
                 default_size: int = 1024):
        self.service = service
        self.limits = limits
        self.default_steps = default_steps
        self.default_size = default_size

    def new_state(self) -> VisitorState:
        return VisitorState()

    @ui_errors
    def upload(self, files, consent: bool, state: VisitorState | None):
        """Decode the uploads (nothing is kept from the original files), find the people, show their crops."""
        state = state or VisitorState()
        paths = [f if isinstance(f, str) else getattr(f, "name", None) or f.get("path") for f in (files or [])]
        try:
            if not paths:
                state.subjects = []
                return [], [], "Upload 1–6 portraits, or one group photo.", state
            if not consent:
                raise gr.Error("Tick the consent box first: your photos are processed only after you confirm that "
                               "you may use them.", print_exception=False)
            if len(paths) > MAX_SUBJECTS:
                raise gr.Error(f"{len(paths)} photos uploaded; at most {MAX_SUBJECTS} people are supported",
                               print_exception=False)
            images = [(Path(p).name, decode_upload(p, self.limits)) for p in paths]
        finally:
            for p in paths:
                discard_upload(p)
        state.subjects = self.service.detect_subjects(images)
        crops = [(s.crop, f"Person {i + 1}") for i, s in enumerate(state.subjects)]
        table = [[i + 1, f"Person {i + 1}", None, 1.0] for i in range(len(state.subjects))]
        names = sorted({s.source for s in state.subjects})
        status = (f"Found {len(crops)} people in {', '.join(names)}. The photos' metadata (EXIF, GPS location) "
                  "was removed.")
        return crops, table, status, state

    def _subjects(self, state: VisitorState | None, table: Any) -> list[SubjectInput]:
        if state is None or not state.subjects:
            raise gr.Error("Upload 1–6 portraits (or one group photo) first.", print_exception=False)
        rows = _rows(table)
        out = []
        for slot, subject in enumerate(state.subjects):
            row = rows[slot] if slot < len(rows) else []
            label = str(row[1]).strip() if len(row) > 1 and row[1] is not None else ""
            age = _number(row[2], "target age", slot) if len(row) > 2 else None
            weight = _number(row[3], "ID weight", slot) if len(row) > 3 else None
            out.append(SubjectInput(subject.crop, label=label or f"Person {slot + 1}", target_age=age,
                                    weight=1.0 if weight is None else weight, face_index=subject.face_index))
        return out

    @ui_errors
    def write_prompt(self, state: VisitorState | None, table: Any, task: str, scene: str):
        prompt = self.service.compose_prompt(self._subjects(state, table), task, scene or "")
        return prompt.text, f"Prompt written by the {'vision-language model' if prompt.source == 'vlm' else 'template'}."

    def request(self, state: VisitorState, form: GenerateForm) -> GenerationRequest:
        versions = form.model_versions or []
        versions = [versions] if isinstance(versions, str) else list(versions)
        size = _int_or_none(form.size) or self.default_size
        return GenerationRequest(
            subjects=self._subjects(state, form.subjects_table),
            task=form.task,
            scene=form.scene or "",
            prompt=form.prompt or "",
            seed=_seed(form.seed),
            num_inference_steps=_int_or_none(form.steps) or self.default_steps,
            guidance_scale=float(form.guidance),
            id_scale=float(form.id_scale),
            id_window=(float(form.window_lo), float(form.window_hi)),
            num_images=int(form.num_images),
            height=size,
            width=size,
            model_versions=versions,
            visitor_id=state.visitor_id,
            consent=bool(form.consent),
        )

    @ui_errors
    def generate(self, state: VisitorState | None, form: GenerateForm, progress=None):
        """Returns (gallery, scores table, seed text, status, download file, state). ``progress`` is a
        ``gr.Progress`` (or any callable taking ``((done, total), desc=..., unit=...)``)."""
        state = state or VisitorState()
        request = self.request(state, form)

        def on_step(done: int, total: int) -> None:
            if progress is not None:
                progress((done, total), desc="denoising", unit="steps")

        def on_wait(ahead: int) -> None:
            if progress is not None:
                progress(0.0, desc=f"waiting for the GPU ({ahead} ahead)")

        result = self.service.generate(request, on_step=on_step, on_wait=on_wait)
        state.generation_ids = list(result.generation_ids)
        labels = [s.label for s in request.subjects]
        gallery, rows = [], []
        for k, cand in enumerate(result.candidates, start=1):
            scores = ", ".join(f"{lab} {v:.2f}" for lab, v in zip(labels, cand.identity_scores))
            rows.append([k, cand.model_version, cand.seed, *cand.identity_scores])
            if cand.image is not None:
                gallery.append((cand.image, f"#{k} · {cand.model_version} · seed {cand.seed} · identity: {scores}"))
        withheld = sum(c.image is None for c in result.candidates)
        status = f"{len(gallery)} candidate(s) from prompt ({result.prompt_source}): {result.prompt}"
        if withheld:
            status += f"\n\n{withheld} image(s) withheld by the safety checker."
        table = {"headers": ["#", "model", "seed", *labels], "data": rows}
        download = self._download(result, request)
        return gallery, table, f"Used seed: **{result.seed}** (candidate i uses seed + i)", status, download, state

    def _download(self, result, request: GenerationRequest) -> str | None:
        shown = [c for c in result.candidates if c.image is not None]
        if not shown:
            return None
        folder = Path(tempfile.gettempdir()) / "idglow-downloads"
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in folder.glob("*.zip"):  # downloads are copied by the server on return; keep the folder small
            if now - old.stat().st_mtime > DOWNLOAD_MAX_AGE_S:
                old.unlink(missing_ok=True)
        path = folder / f"idglow-{uuid.uuid4().hex}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for k, cand in enumerate(shown, start=1):
                buf = io.BytesIO()
                cand.image.save(buf, format="PNG")
                zf.writestr(f"idglow_{k}_{cand.model_version}_{cand.seed}.png", buf.getvalue())
            zf.writestr("params.json", json.dumps({
                "prompt": result.prompt, "prompt_source": result.prompt_source, "seed": result.seed,
                "params": result.params, "candidates": [
                    {"model_version": c.model_version, "seed": c.seed, "identity": c.identity_scores} for c in shown],
            }, indent=2, default=str))
        return str(path)

    @ui_errors
    def add_to_pool(self, state: VisitorState | None):
        if state is None or not state.generation_ids:
            raise gr.Error("Generate some images first.", print_exception=False)
        n = self.service.add_to_pool(state.visitor_id, state.generation_ids)
        return f"Thank you: {n} image(s) added to the annotation pool (they are kept for research)."

    @ui_errors
    def delete_my_data(self, state: VisitorState | None):
        """Remove this visitor's generations, uploads and files; returns cleared widgets and a fresh state."""
        if state is None:
            return [], [], None, "Nothing of yours is stored.", VisitorState()
        result = self.service.delete_visitor_data(state.visitor_id)
        msg = (f"Deleted {result.generations} generation(s), {result.reference_photos} uploaded photo(s) and "
               f"{result.files} file(s).")
        return [], [], None, msg, VisitorState()
