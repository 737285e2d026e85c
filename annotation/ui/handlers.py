"""Event handlers of the three tabs. Each one turns widget values into a typed request, calls one service
method and turns the result back into widget values; domain errors become ``gr.Error`` here and nowhere
deeper. The caller is checked on the server in every handler that touches annotation data.

The handlers only know their services through small interfaces, so the tests drive them with fakes.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gradio as gr

from annotation.errors import UndoExpired
from annotation.generation import GenerationRequest, SubjectInput
from annotation.privacy import UploadLimits, decode_upload, discard_upload, new_visitor_id
from db.models import Role
from idglow.errors import IdGlowError
from idglow.subjects import MAX_SUBJECTS

logger = logging.getLogger(__name__)

SIDES = {"left": "left", "right": "right", "tie": "tie"}
OVERALL_CHOICES = [("A (left)", "left"), ("B (right)", "right"), ("Tie", "tie"), ("Both bad", "both_bad")]
PAIR_CHOICES = [("A", "left"), ("B", "right"), ("Same", "tie")]
STRENGTH_CHOICES = [("Slightly", "slight"), ("Clearly", "clear")]
SUBJECT_COLUMNS = ["person", "label", "target age", "ID weight"]
DOWNLOAD_MAX_AGE_S = 3600


def ui_errors(fn):
    """Show domain errors (and input errors from the library) as one-line messages in the page."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (IdGlowError, ValueError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception:
            logger.exception("%s failed", fn.__name__)
            raise gr.Error("something went wrong on the server; please try again", print_exception=False) from None

    return wrapper


# ------------------------------------------------------------------------------------------------ Generate
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
                import io

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


# ------------------------------------------------------------------------------------------------ Sign-in
class SignInHandlers:
    def __init__(self, auth):
        self.auth = auth

    @ui_errors
    def sign_in(self, username: str, password: str):
        """Returns (token, status, password field cleared, annotate content, research content)."""
        signed = self.auth.sign_in(username, password)
        user = signed.user
        researcher = user.role in (Role.researcher, Role.admin)
        status = f"Signed in as **{user.username}** ({user.role.value})."
        return signed.token, status, "", gr.update(visible=True), gr.update(visible=researcher)

    def sign_out(self, token: str | None):
        self.auth.sign_out(token)
        return None, "Signed out.", gr.update(visible=False), gr.update(visible=False)


# ------------------------------------------------------------------------------------------------ Annotate
@dataclass
class PairState:
    served: Any = None  # ServedComparison
    shown_at: float = 0.0
    key: str = ""


class AnnotateHandlers:
    """Outputs of ``show``: refs gallery, left image, right image, prompt, progress, 6 identity radios
    (visibility), then the reset choices (overall, strength, texture, artifacts), the pair state."""

    def __init__(self, service, auth, clock=time.monotonic):
        self.service = service
        self.auth = auth
        self.clock = clock

    def _user(self, token):
        return self.auth.require(token, Role.annotator, "annotate")

    def _show(self, user, note: str = ""):
        served = self.service.next_pair(user.id)
        progress = self.service.progress(user.id)
        text = f"{progress.votes} vote(s) by you · {progress.remaining} pair(s) left in the pool"
        if note:
            text = f"{note} · {text}"
        reset = [gr.update(value=None)] * 4
        if served is None:
            hidden = [gr.update(visible=False, value=None)] * MAX_SUBJECTS
            return [[], None, None, "No pair is waiting for you. Thank you!", text, *hidden, *reset, PairState()]
        refs = [(self.service.image_path(p), label or f"Person {i + 1}")
                for i, (p, label) in enumerate(zip(served.reference_paths, served.subject_labels)) if p]
        radios = [gr.update(visible=i < served.num_subjects, value=None,
                            label=f"Identity of {served.subject_labels[i] or f'Person {i + 1}'} (key {i + 1})"
                            if i < served.num_subjects else None)
                  for i in range(MAX_SUBJECTS)]
        task = "age transformation" if served.task == "age" else "group fusion"
        prompt = f"**Task:** {task}  \n**Prompt:** {served.prompt}"
        state = PairState(served, self.clock(), uuid.uuid4().hex)
        return [refs, self.service.image_path(served.left.image_path), self.service.image_path(served.right.image_path),
                prompt, text, *radios, *reset, state]

    @ui_errors
    def show(self, token: str | None):
        return self._show(self._user(token))

    @ui_errors
    def vote(self, token: str | None, pair: PairState | None, overall: str | None, strength: str | None,
             texture: str | None, artifacts: str | None, *identity: str | None):
        user = self._user(token)
        if pair is None or pair.served is None:
            raise gr.Error("There is no pair to vote on; press Skip to load one.", print_exception=False)
        if overall is None:
            raise gr.Error("Choose A, B, tie or both bad first.", print_exception=False)
        served = pair.served
        choice = served.choice_for_side
        ident = {i: choice(v) for i, v in enumerate(identity[: served.num_subjects]) if v}
        self.service.vote(
            user.id, served.comparison_id, overall=choice(overall),
            strength=strength if overall in ("left", "right") else None,
            identity=ident, texture=choice(texture) if texture else None,
            artifacts=choice(artifacts) if artifacts else None,
            duration_ms=min(int((self.clock() - pair.shown_at) * 1000), 24 * 3600 * 1000), key=pair.key,
        )
        return self._show(user, "Vote saved")

    @ui_errors
    def skip(self, token: str | None, pair: PairState | None):
        user = self._user(token)
        if pair is not None and pair.served is not None:
            self.service.skip(user.id, pair.served.comparison_id)
        return self._show(user, "Skipped")

    @ui_errors
    def undo(self, token: str | None, pair: PairState | None):
        user = self._user(token)
        try:
            self.service.undo(user.id)
        except UndoExpired as err:
            raise gr.Error(f"Nothing to undo: {err}", print_exception=False) from None
        if pair is not None and pair.served is not None:  # the pair on screen goes back in the queue
            self.service.skip(user.id, pair.served.comparison_id)
        return self._show(user, "Last vote undone")

    @ui_errors
    def flag(self, token: str | None, pair: PairState | None, side: str | None, failure_types, note: str):
        user = self._user(token)
        if pair is None or pair.served is None:
            raise gr.Error("There is no pair on screen to flag.", print_exception=False)
        if side not in ("left", "right"):
            raise gr.Error("Choose which image (A or B) to flag.", print_exception=False)
        shown = pair.served.left if side == "left" else pair.served.right
        self.service.flag(user.id, shown.candidate_id, failure_types or [], note or "")
        return f"Flagged image {'A' if side == 'left' else 'B'} as {', '.join(failure_types)}."


# ------------------------------------------------------------------------------------------------ Research
@dataclass
class ExportForm:
    format: str
    with_images: bool
    tie_policy: str
    min_votes: float
    since: str

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _parse_since(text: str | None) -> datetime | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise gr.Error(f"'since' {text!r} is not a date such as 2025-01-31 or 2025-01-31T12:00",
                       print_exception=False) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def leaderboard_figure(rows):
    """Bradley–Terry scores with their intervals (matplotlib figure), or None with no rows."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.6 * len(rows) + 1.2))
    names = [r.model for r in rows][::-1]
    scores = [r.score for r in rows][::-1]
    lo = [r.score - r.ci_low for r in rows][::-1]
    hi = [r.ci_high - r.score for r in rows][::-1]
    ax.errorbar(scores, range(len(rows)), xerr=[lo, hi], fmt="o", capsize=4)
    ax.set_yticks(range(len(rows)), names)
    ax.axvline(0, color="0.8", lw=1)
    ax.set_xlabel("Bradley–Terry score (95% bootstrap interval)")
    fig.tight_layout()
    plt.close(fig)
    return fig


class ResearchHandlers:
    def __init__(self, service, auth):
        self.service = service
        self.auth = auth

    def _user(self, token, action: str):
        return self.auth.require(token, Role.researcher, action)

    @ui_errors
    def refresh(self, token: str | None):
        """Returns (counts, annotators, agreement, leaderboard table, leaderboard plot)."""
        self._user(token, "see research data")
        counts = self.service.counts()
        counts_md = " · ".join(f"**{v}** {k}" for k, v in counts.items())
        stats = self.service.annotator_stats()
        annotators = {"headers": ["annotator", "votes", "mean time (s)", "gold votes", "gold accuracy"],
                      "data": [[s.username, s.votes, None if s.mean_duration_ms is None else round(s.mean_duration_ms / 1000, 1),
                                s.gold_votes, None if s.gold_accuracy is None else round(s.gold_accuracy, 3)]
                               for s in stats]}
        agreement = {"headers": ["dimension", "Krippendorff alpha", "items with 2+ votes", "ratings"],
                     "data": [[a.dimension, None if a.alpha is None else round(a.alpha, 3), a.units, a.ratings]
                              for a in self.service.agreement().values()]}
        board = self.service.leaderboard()
        table = {"headers": ["model", "score", "interval low", "interval high", "wins", "losses", "ties"],
                 "data": [[r.model, round(r.score, 3), round(r.ci_low, 3), round(r.ci_high, 3), r.wins, r.losses, r.ties]
                          for r in board]}
        if not board:
            counts_md += "\n\nThe leaderboard needs votes on pairs of two different model versions."
        return counts_md, annotators, agreement, table, leaderboard_figure(board)

    @ui_errors
    def export(self, token: str | None, form: ExportForm):
        """Returns (files to download, status with the DPO command)."""
        user = self._user(token, "export preferences")
        from annotation.ui.services import ExportFilters

        filters = ExportFilters(format=form.format, with_images=bool(form.with_images), tie_policy=form.tie_policy,
                                min_votes=int(form.min_votes or 1), since=_parse_since(form.since))
        result = self.service.export(user.id, filters)
        files = [str(result.archive), *[str(p) for p in result.data_files]]
        status = (f"Exported **{result.rows}** comparison(s). Train DPO on it and serve the result:\n\n"
                  f"```bash\n{result.command}\n```")
        return files, status
