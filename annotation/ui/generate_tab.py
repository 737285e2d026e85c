"""The Generate tab (public): uploads → people → prompt → candidates with identity scores."""

from __future__ import annotations

import inspect

import gradio as gr

from annotation.ui.generate_handlers import SUBJECT_COLUMNS, GenerateForm, GenerateHandlers
from idglow.schedule import window_for_task

TASK_CHOICES = [("Group fusion", "fusion"), ("Age transformation", "age")]


def task_window_bounds(task: str) -> tuple[float, float]:
    """The σ window preset of a task (from ``idglow.schedule``), for the window sliders."""
    window = window_for_task(task)
    return window.sigma_lo, window.sigma_hi


def build_generate_tab(handlers: GenerateHandlers, versions, *, tiny: bool, concurrency_limit: int) -> None:
    """``versions()`` lists the servable model versions (the base first)."""
    sizes = [64, 128] if tiny else [512, 768, 1024, 1280]
    with gr.Tab("Generate"):
        visitor = gr.State(None)
        gr.Markdown("Upload one portrait per person (up to 6), or one group photo whose faces become the people. "
                    "Photos are kept for 24 hours at most, unless you add your results to the annotation pool.")
        consent = gr.Checkbox(label="I confirm that I may use these photos and that the people in them agreed "
                                    "(required before any photo is processed)", elem_id="gen-consent")
        files = gr.File(label="Portraits (1–6) or one group photo · JPEG, PNG or WebP", file_count="multiple",
                        type="filepath", elem_id="gen-files")
        crops = gr.Gallery(label="People found (slot order)", columns=6, height=200, object_fit="contain", format="png",
                           elem_id="gen-crops", interactive=False)
        subjects = gr.Dataframe(headers=SUBJECT_COLUMNS, datatype=["number", "str", "number", "number"],
                                column_count=(4, "fixed"), interactive=True, label="Label, optional target age and "
                                "ID weight per person", elem_id="gen-subjects")
        task = gr.Radio(TASK_CHOICES, value="fusion", label="Task", elem_id="gen-task")
        scene = gr.Textbox(label="Scene", placeholder="a picnic in a park", elem_id="gen-scene")
        write = gr.Button("Write the prompt for me", elem_id="gen-write")
        prompt = gr.Textbox(label="Prompt (leave empty to write it from the people and the scene)", lines=3,
                            elem_id="gen-prompt")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                seed = gr.Number(label="Seed (-1 = random)", precision=0, value=-1, minimum=-1,
                                 elem_id="gen-seed-input")
                steps = gr.Slider(1, 60, value=handlers.default_steps, step=1, label="Steps")
                guidance = gr.Slider(0.0, 10.0, value=3.5, step=0.5, label="Guidance")
            with gr.Row():
                id_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Global ID weight")
                window_lo = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="σ window: from")
                window_hi = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="σ window: to")
            with gr.Row():
                num_images = gr.Slider(1, 8, value=2, step=1, label="Candidates", elem_id="gen-num")
                size = gr.Dropdown(sizes, value=handlers.default_size, label="Size (pixels)")
                model_versions = gr.Dropdown(versions(), value=versions()[:1], multiselect=True,
                                             label="Model versions (several: same people and seeds on each)",
                                             elem_id="gen-versions")
        run = gr.Button("Generate", variant="primary", elem_id="gen-run")
        seed_used = gr.Markdown(elem_id="gen-seed")
        gallery = gr.Gallery(label="Candidates", columns=4, format="png", elem_id="gen-gallery", interactive=False)
        scores = gr.Dataframe(label="Identity score per person (cosine similarity to the reference; 0 = not found)",
                              interactive=False, elem_id="gen-scores")
        status = gr.Markdown(elem_id="gen-status")
        download = gr.File(label="Download (PNG + parameters)", elem_id="gen-download", interactive=False)
        with gr.Row():
            pool = gr.Button("Add my results to the annotation pool", elem_id="gen-pool")
            delete = gr.Button("Delete my data", variant="stop", elem_id="gen-delete")

    form = dict(subjects_table=subjects, task=task, scene=scene, prompt=prompt, consent=consent, seed=seed,
                steps=steps, guidance=guidance, id_scale=id_scale, window_lo=window_lo, window_hi=window_hi,
                num_images=num_images, size=size, model_versions=model_versions)
    assert list(form) == GenerateForm.names()

    def generate(state, subjects_table, task, scene, prompt, consent, seed, steps, guidance, id_scale, window_lo,
                 window_hi, num_images, size, model_versions, progress=gr.Progress()):
        form = GenerateForm(subjects_table, task, scene, prompt, consent, seed, steps, guidance, id_scale, window_lo,
                            window_hi, num_images, size, model_versions)
        return handlers.generate(state, form, progress=progress)

    assert list(inspect.signature(generate).parameters)[1:-1] == GenerateForm.names()

    files.upload(handlers.upload, [files, consent, visitor], [crops, subjects, status, visitor],
                 api_name="upload", concurrency_limit=4, concurrency_id="faces")
    task.change(lambda t: [gr.update(value=v) for v in task_window_bounds(t)], task,
                [window_lo, window_hi], api_visibility="private", queue=False)
    write.click(handlers.write_prompt, [visitor, subjects, task, scene], [prompt, status], api_name="write_prompt",
                concurrency_limit=4, concurrency_id="faces")
    run.click(generate, [visitor, *form.values()], [gallery, scores, seed_used, status, download, visitor],
              api_name="generate", concurrency_limit=concurrency_limit, concurrency_id="generate",
              show_progress="full")
    pool.click(handlers.add_to_pool, [visitor], [status], api_name="add_to_pool", concurrency_id="db",
               concurrency_limit=8)
    delete.click(handlers.delete_my_data, [visitor], [crops, gallery, download, status, visitor],
                 api_name="delete_my_data", concurrency_id="db", concurrency_limit=8)
