"""The Generate tab (public). Inputs on the left (photos, one card per person, Generate), results on the right;
one column on a phone. Events pass widget values by name (``inputs_kwargs``) and handlers answer by name."""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

import gradio as gr

from annotation.generation.request import MAX_LABEL_CHARS, MAX_PROMPT_CHARS, MAX_SCENE_CHARS
from annotation.ui.errors import notice_html
from annotation.ui.generate_handlers import (
    DESCRIBE_CHOICES,
    LEAVE_TO_MODEL,
    NUM_CARDS,
    SCORE_HEADERS,
    UPLOAD_HINT,
    GenerateForm,
    GenerateHandlers,
    card_names,
    cards_from,
)
from annotation.ui.theme import OPERATOR_NOTES
from idglow.schedule import window_for_task

TASK_CHOICES = [("Group photo", "fusion"), ("Change ages", "age")]
PROFILE_CHOICES = [("Flat", "flat"), ("Linear decay (full at the low σ edge, none at the high)", "linear")]
PROMPT_LABEL = ("Prompt (empty: written from the people and the scene at each Generate; once filled it is used as "
                "written and overrides the Scene)")
FORM_FIELDS = ("task", "scene", "prompt", "consent", "seed", "steps", "guidance", "id_scale", "window_lo",
               "window_hi", "id_profile", "num_images", "size", "model_versions")


def _card(i: int, w: dict[str, Any]) -> None:
    n = card_names(i)
    with gr.Column(visible=False, min_width=150, elem_classes=["gen-card"], elem_id=f"gen-card-{i}") as card:
        # PNG, lossless: "Delete my data" finds the served copy of a crop by its pixels
        w[n["crop"]] = gr.Image(show_label=False, interactive=False, height=84, buttons=[], container=False,
                                format="png", elem_classes=["gen-card-crop"])
        # Visible labels above compact fields (a placeholder disappears while typing and is too pale to read)
        field = dict(container=False, elem_classes=["gen-card-field"])
        w[n["label"]] = gr.Textbox(label="Name", max_lines=1, max_length=MAX_LABEL_CHARS,
                                   placeholder=f"Person {i + 1}", elem_id=f"gen-label-{i}", **field)
        with gr.Row(elem_classes=["gen-card-row"]):
            w[n["describe"]] = gr.Dropdown(DESCRIBE_CHOICES, value=LEAVE_TO_MODEL, label="Describe as",
                                           elem_id=f"gen-describe-{i}", min_width=90, **field)
            w[n["age"]] = gr.Number(label="Target age", minimum=0, maximum=120, value=None, min_width=70,
                                    elem_id=f"gen-age-{i}", **field)
        with gr.Accordion("Advanced", open=False, elem_classes=["gen-card-advanced"]):
            w[n["weight"]] = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="ID weight", elem_id=f"gen-weight-{i}")
            w[n["remove"]] = gr.Button("Remove this person", size="sm", elem_id=f"gen-remove-{i}")
    w[n["card"]] = card


def _inputs(handlers: GenerateHandlers, versions, tiny: bool, w: dict[str, Any]) -> None:
    sizes = [64, 128] if tiny else [512, 768, 1024, 1280]
    w["files"] = gr.File(label="Portraits (1–6, one per person) or one group photo · JPEG, PNG, WebP, HEIC",
                         file_count="multiple", type="filepath", height=118, elem_id="gen-files")
    with gr.Row(elem_id="gen-consent-row"):
        w["consent"] = gr.Checkbox(label="I may use these photos, and the people in them agreed", scale=2,
                                   min_width=300, container=False, elem_id="gen-consent")
        w["example"] = gr.Button("Try an example family", size="sm", scale=0, min_width=180, elem_id="gen-example")
    w["photo_status"] = gr.Markdown(UPLOAD_HINT, elem_id="gen-photo-status")
    with gr.Row(elem_id="gen-cards"):
        for i in range(NUM_CARDS):
            _card(i, w)
    with gr.Row(elem_id="gen-what", equal_height=True):
        w["task"] = gr.Radio(TASK_CHOICES, value="fusion", label="Task", show_label=False, container=False,
                             elem_id="gen-task", scale=0, min_width=280)
        w["scene"] = gr.Textbox(label="Scene", show_label=False, container=False, max_lines=1, scale=1,
                                placeholder="Scene, e.g. a picnic in a park", max_length=MAX_SCENE_CHARS,
                                elem_id="gen-scene")
    w["run"] = gr.Button("Generate", variant="primary", elem_id="gen-run")
    w["run_note"] = gr.HTML(elem_id="gen-run-note", padding=False)  # what to fix first, under the button
    with gr.Accordion("Prompt and image settings", open=False, elem_id="gen-settings"):
        w["write"] = gr.Button("Write the prompt for me", size="sm", elem_id="gen-write")
        w["prompt"] = gr.Textbox(label=PROMPT_LABEL, lines=2,
                                 max_length=MAX_PROMPT_CHARS, elem_id="gen-prompt")
        with gr.Row():
            w["seed"] = gr.Number(label="Seed (-1 = random)", precision=0, value=-1, minimum=-1,
                                  elem_id="gen-seed-input")
            w["num_images"] = gr.Slider(1, 8, value=2, step=1, label="Images", elem_id="gen-num")
            w["size"] = gr.Dropdown(sizes, value=handlers.default_size, label="Size (pixels)", elem_id="gen-size")
        with gr.Row():
            w["steps"] = gr.Slider(1, 60, value=handlers.default_steps, step=1, label="Steps", elem_id="gen-steps")
            w["guidance"] = gr.Slider(0.0, 10.0, value=3.5, step=0.5, label="Guidance")
    with gr.Accordion("Research settings", open=False, elem_id="gen-research"):
        with gr.Row():
            w["id_scale"] = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Global ID weight")
            w["window_lo"] = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="σ window: from")
            w["window_hi"] = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="σ window: to")
        w["id_profile"] = gr.Radio(PROFILE_CHOICES, value="flat", label="Identity strength inside the window",
                                   elem_id="gen-profile")
        w["model_versions"] = gr.Dropdown(versions(), value=versions()[:1], multiselect=True,
                                          label="Model versions (several: same people and seeds on each)",
                                          elem_id="gen-versions")


def _outputs(w: dict[str, Any]) -> None:
    w["gallery"] = gr.Gallery(label="Result", columns=2, height=420, format="png", interactive=False,
                              elem_id="gen-gallery")
    w["seed_used"] = gr.Markdown(elem_id="gen-seed")
    w["scores"] = gr.Dataframe(value={"headers": SCORE_HEADERS, "data": []}, headers=SCORE_HEADERS,
                               label="How well each person's identity was kept", interactive=False, wrap=True,
                               column_widths=["30%", "70%"], elem_id="gen-scores")
    w["pngs"] = gr.File(label="Download PNG", file_count="multiple", interactive=False, height=140,
                        elem_id="gen-pngs")
    w["archive"] = gr.DownloadButton("Download all + parameters", visible=False, elem_id="gen-archive")
    w["status"] = gr.Markdown(elem_id="gen-status")
    with gr.Row():
        w["pool"] = gr.Button("Add my latest results to the annotation pool", size="sm", elem_id="gen-pool")
        w["delete"] = gr.Button("Delete my data", variant="stop", size="sm", elem_id="gen-delete")
    with gr.Group(visible=False, elem_id="gen-delete-confirm") as confirm:
        gr.Markdown("**Delete everything of yours?** Your photos and your results are removed at once, and so are "
                    "results you added to the annotation pool — except those annotators have already voted on, "
                    "which stay in the pool, no longer linked to you. This cannot be undone.",
                    elem_id="gen-delete-text")
        with gr.Row():
            w["delete_yes"] = gr.Button("Yes, delete everything", variant="stop", size="sm", elem_id="gen-delete-yes")
            w["delete_no"] = gr.Button("Keep my data", size="sm", elem_id="gen-delete-no")
    w["delete_confirm"] = confirm


def build_generate_tab(handlers: GenerateHandlers, versions, *, tiny: bool) -> None:
    """``versions()`` lists the servable model versions (the base first)."""
    w: dict[str, Any] = {}
    with gr.Tab("Generate", id="generate", elem_id="gen-tab"):
        w["state"] = gr.State(None)
        with gr.Row(equal_height=False, elem_id="gen-layout"):
            with gr.Column(scale=6, min_width=330, elem_id="gen-inputs"):
                _inputs(handlers, versions, tiny, w)
            with gr.Column(scale=5, min_width=330, elem_id="gen-outputs"):
                _outputs(w)
        gr.Markdown("Photos and results are kept for 24 hours at most, unless you add your results to the "
                    "annotation pool. “Delete my data” removes them at once, except pooled results that "
                    "annotators have already voted on: those stay in the pool, no longer linked to you.",
                    elem_id="gen-privacy")
        if tiny:
            with gr.Accordion("About this demo server (for its operator)", open=False, elem_id="gen-operator"):
                gr.Markdown(OPERATOR_NOTES)
    _wire(handlers, w)


def _by_name(w: dict[str, Any], names: list[str], inputs: dict[str, Any] | None = None):
    """Wrap a handler answering by widget name into one answering by component. ``inputs`` (name → component):
    the keyword inputs, declared on the wrapper with default None so that API clients may leave out any whose
    widget has no value of its own (e.g. a blank target age)."""
    def wrap(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return {w[k]: v for k, v in fn(*args, **kwargs).items() if k in names}

        if inputs:
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind not in (p.VAR_KEYWORD, p.KEYWORD_ONLY)]
            params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None) for k in inputs
                       if k not in {p.name for p in params}]
            wrapper.__signature__ = inspect.Signature(params)
        return wrapper
    return wrap


def _card_widgets(w: dict[str, Any], kinds: tuple[str, ...]) -> dict[str, Any]:
    return {card_names(i)[k]: w[card_names(i)[k]] for i in range(NUM_CARDS) for k in kinds}


def _form(values: dict[str, Any]) -> GenerateForm:
    return GenerateForm(**{k: values[k] for k in FORM_FIELDS}, cards=cards_from(values))


def _wire(handlers: GenerateHandlers, w: dict[str, Any]) -> None:
    card_in = _card_widgets(w, ("label", "age", "describe", "weight"))
    cards_out = ["state", "photo_status", *_card_widgets(w, ("card", "crop", "label", "age", "describe", "weight"))]
    form_in = {**{k: w[k] for k in FORM_FIELDS}, **card_in, "state": w["state"]}
    faces = dict(concurrency_limit=4, concurrency_id="faces")

    inputs = {"state": w["state"], "files": w["files"], "consent": w["consent"], **card_in}

    @_by_name(w, cards_out, inputs)
    def photos(state, files, consent, **cards):
        return handlers.photos(state, files, consent, cards_from(cards))

    w["files"].change(photos, inputs_kwargs=inputs, outputs=[w[k] for k in cards_out], api_name="upload", **faces)
    w["consent"].change(photos, inputs_kwargs=inputs, outputs=[w[k] for k in cards_out], api_visibility="private",
                        **faces)
    for i in range(NUM_CARDS):
        remove = _by_name(w, cards_out, {"state": w["state"], **card_in})(
            functools.partial(_remove, handlers, i))
        w[card_names(i)["remove"]].click(remove, inputs_kwargs={"state": w["state"], **card_in},
                                         outputs=[w[k] for k in cards_out], api_visibility="private")
    example_out = [*cards_out, "files", "scene"]
    w["example"].click(_by_name(w, example_out)(handlers.example_family), inputs_kwargs={"state": w["state"]},
                       outputs=[w[k] for k in example_out], api_name="example_family", **faces)
    w["task"].change(_window_preset, inputs_kwargs={"task": w["task"]}, outputs=[w["window_lo"], w["window_hi"]],
                     api_visibility="private", queue=False)

    @_by_name(w, ["prompt", "status"], form_in)
    def write_prompt(**values):
        return handlers.write_prompt(values["state"], _form(values))

    w["write"].click(write_prompt, inputs_kwargs=form_in, outputs=[w["prompt"], w["status"]],
                     api_name="write_prompt", **faces)
    results = ["gallery", "scores", "seed_used", "status", "pngs", "archive", "state"]

    @_by_name(w, results, form_in)
    def generate(request: gr.Request, progress=gr.Progress(), **values):
        return handlers.generate(values["state"], _form(values), progress=progress, page=request.session_hash)

    # The generator's own queue (GpuQueue) is the only limit on generate calls: Gradio hands each call to the app
    # at once (no concurrency limit of its own), and the handler refuses a call beyond the queue's limits before
    # any work. Widget values arrive as sent (preprocess=False): the input guard (file_guard) has already checked
    # their shapes, and preprocessing this form's ~30 inputs one thread hop each took up to 0.8 s under a burst.
    # First, in the page: the seed of the previous run is not shown as this run's while it runs, and the note of
    # the previous press goes (a separate listener writing these would overwrite the run's own answer).
    pressed = w["run"].click(None, None, [w["seed_used"], w["run_note"]], api_visibility="private",
                             show_progress="hidden", js="() => ['Used seed: shown when this run ends', '']")
    run = pressed.then(generate, inputs_kwargs=form_in, outputs=[w[k] for k in results], api_name="generate",
                       concurrency_limit=None, concurrency_id="generate", preprocess=False, show_progress="full",
                       show_progress_on=[w["gallery"]])
    run.then(handlers.run_note, inputs_kwargs={"state": w["state"]}, outputs=[w["run_note"]], queue=False,
             api_visibility="private", show_progress="hidden")
    _wire_hints(w)
    w["pool"].click(_by_name(w, ["status"])(handlers.add_to_pool), inputs_kwargs={"state": w["state"]},
                    outputs=[w["status"]], api_name="add_to_pool", concurrency_id="db", concurrency_limit=8)
    cleared = [*cards_out, "files", "gallery", "pngs", "archive", "scores", "status"]
    _wire_delete_confirmation(w)
    w["delete_yes"].click(_by_name(w, cleared)(handlers.delete_my_data), inputs_kwargs={"state": w["state"]},
                          outputs=[w[k] for k in cleared], api_name="delete_my_data", concurrency_id="db",
                          concurrency_limit=8).then(functools.partial(gr.update, visible=False), None,
                                                    [w["delete_confirm"]], queue=False, api_visibility="private")


def _wire_hints(w: dict[str, Any]) -> None:
    """Plain hints under the Generate button while the form is filled in, worked out in the page from the
    form's current values. Every change that can alter a hint recomputes all of them, without a server round
    trip: an answer to an earlier change (e.g. the target ages the example family's photo check writes back)
    cannot arrive late and overwrite a hint the visitor has just been shown."""
    ages = [w[card_names(i)["age"]] for i in range(NUM_CARDS)]
    inputs = [w["task"], w["scene"], w["prompt"], *ages]
    # Not the prompt box: "Write the prompt for me" fills it from the scene, and that is no reason for a hint
    for trigger in (w["task"], w["scene"], *ages):
        trigger.change(None, inputs, [w["run_note"]], js=form_hints_js(), queue=False, api_visibility="private",
                       show_progress="hidden")


def _wire_delete_confirmation(w: dict[str, Any]) -> None:
    """Nothing is deleted before the visitor confirms what goes (pooled results included)."""
    for button, ask in ((w["delete"], True), (w["delete_no"], False)):
        button.click(functools.partial(gr.update, visible=ask), None, [w["delete_confirm"]], queue=False,
                     api_visibility="private", show_progress="hidden")


def _remove(handlers: GenerateHandlers, index: int, **values) -> dict:
    return handlers.remove_person(values["state"], cards_from(values), index)


SCENE_HINT = ("The prompt box is filled, so it is used as written and the Scene is not: empty it or press "
              "'Write the prompt for me' again to use this scene.")
AGE_HINT = "A target age is set: 'Change ages' is the task that shows people at a chosen age."


def form_hints_js() -> str:
    """The page-side function ``(task, scene, prompt, ...ages) => html`` of the hints under the Generate button:
    a Scene typed while the prompt box is filled is not used (:data:`SCENE_HINT`); a target age typed while the
    task is a group photo needs "Change ages" (:data:`AGE_HINT`). Empty when neither applies."""
    scene_hint = json.dumps(notice_html(SCENE_HINT, problem=True))
    age_hint = json.dumps(notice_html(AGE_HINT, problem=True))
    return ("(task, scene, prompt, ...ages) => {"
            " const filled = (v) => v !== null && v !== undefined && String(v).trim() !== '';"
            f" return (filled(prompt) && filled(scene) ? {scene_hint} : '')"
            f" + (task === 'fusion' && ages.some(filled) ? {age_hint} : ''); }}")


def _window_preset(task: str) -> tuple[float, float]:
    """The σ window of a task's preset (from :mod:`idglow.schedule`)."""
    window = window_for_task(task)
    return window.sigma_lo, window.sigma_hi
