"""The Gradio page of the app: the form of every task, the queue with progress and cancel, the result (video,
download, settings, timing summary, provenance) and the gallery of results since start.

The page polls the engine twice a second (`gr.Timer`) and sends only what changed. Every handler turns a
`LongCatError` into its message on the page (the CLI's text); anything else is logged with its traceback and shown
as an internal error, so the page never shows a traceback and the server keeps serving.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from longcat_jax.app import form, views
from longcat_jax.app.confine import OutputFolderOnly
from longcat_jax.app.engine import Engine
from longcat_jax.app.jobs import JobState
from longcat_jax.errors import InputError, LongCatError
from longcat_jax.pipelines.buckets import RESOLUTIONS
from longcat_jax.pipelines.request import OUTPUT_SIZES
from longcat_jax.pipelines.tasks import SETTING_READERS, TASKS
from longcat_jax.quantization import MODES as QUANTIZE_MODES

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
GALLERY_COLUMNS = 4
TASK_LABELS = {
    "t2v": "Text to video",
    "i2v": "Image to video",
    "continuation": "Continue a video",
    "long": "Long video",
    "refine": "Refine a video (480p -> 720p)",
}
# Gradio lays a gallery out in as many columns as it has items, so a first result would fill the whole width; keep
# the gallery's columns (Gradio 6 sets them as this CSS variable; with another version the default layout stays).
PAGE_CSS = f"#gallery .grid-container {{ --grid-cols: {GALLERY_COLUMNS} !important; }}"
QUANTIZE_NOTE = ("Changing the quantization reloads the DiT and the other models (as long as the first load); the "
                 "weights loaded now are named at the top. fp8 needs an Ada or Hopper GPU, fp8-attention (fp8 with "
                 "the self attention, dense and block-sparse, in FP8 too) a Hopper GPU; int8 and fp8-weight-only run on any GPU.")


def build_app(engine: Engine, *, max_upload_mb: float = form.DEFAULT_MAX_UPLOAD_MB) -> gr.Blocks:
    """The page for a started engine whose models are loaded (`Engine.warm_up`)."""
    defaults = engine.models.pipeline.defaults
    bsa_dir = engine.settings.output_dir / "custom_bsa"  # kept: the sidecars' commands name these files
    presets = form.bsa_presets()

    def guarded(handler: Callable, outputs: int) -> Callable:
        """`handler` (its first output is the error box), with a LongCatError shown there as its message and
        anything else as an internal error; its other outputs then stay as they are."""

        @functools.wraps(handler)  # keeps the signature, so Gradio still passes event data (gr.SelectData)
        def run(*args):
            try:
                return handler(*args)
            except LongCatError as err:
                message = f"**Error:** {err}"
            except Exception as err:  # the page gets a message, the log the traceback
                logger.exception("page handler %s failed", handler.__name__)
                message = f"**Internal error** ({type(err).__name__}); the server log has the details"
            return message if outputs == 1 else (message, *[gr.skip()] * (outputs - 1))

        return run

    with gr.Blocks(title="LongCat-Video (JAX)", analytics_enabled=False, **_css(gr.Blocks.__init__)) as app:
        session = gr.State({"mine": [], "shown": None, "gallery": -1, "choices": None, "header": None})
        header = gr.Markdown(views.header(engine), elem_id="header")
        with gr.Row():
            with gr.Column(scale=3):
                fields = _form_fields(defaults, presets)
                submit = gr.Button("Generate", variant="primary", elem_id="submit")
                error_box = gr.Markdown(elem_id="error")
            with gr.Column(scale=4):
                status = gr.Markdown(elem_id="status")
                queue = gr.Dataframe(headers=views.QUEUE_HEADERS, value=[], label="Queue", interactive=False,
                                     elem_id="queue")
                with gr.Row():
                    cancel_choice = gr.Dropdown([], label="Job of this page to cancel", elem_id="cancel-job", scale=3)
                    cancel = gr.Button("Cancel job", elem_id="cancel", scale=1)
                result_video = gr.Video(label="Result", interactive=False, elem_id="result-video")
                with gr.Row():
                    download = gr.File(label="Download (mp4 and its provenance JSON)", interactive=False,
                                       file_count="multiple", elem_id="download")
                    refine_result = gr.Button("Refine this result", elem_id="refine-result")
                settings = gr.Markdown(elem_id="settings")
                summary = gr.Code(label="Timing summary", interactive=False, elem_id="summary")
                with gr.Accordion("Provenance (the JSON file beside the video)", open=False):
                    provenance = gr.Code(language="json", interactive=False, max_lines=24, show_label=False,
                                         elem_id="provenance")
                gallery = gr.Gallery(label="Results since start", columns=GALLERY_COLUMNS, elem_id="gallery")
        timer = gr.Timer(POLL_SECONDS)
        result_outputs = [result_video, download, settings, summary, provenance]  # as _result_outputs gives them

        def submit_job(state: dict, *values):
            values = form.FormValues(**dict(zip(fields, values, strict=True)))
            request = form.build_request(values, engine.settings, bsa_dir, max_upload_mb)
            job = engine.submit(request)
            state["mine"].append(job.id)
            return "", state

        def cancel_job(choice: str | None):
            if not choice:
                raise InputError("pick a queued or running job to cancel")
            if engine.cancel(choice):
                return f"Cancel of {choice} asked; it leaves no output."
            return f"{choice} can no longer be cancelled (it finished, or its output is written)."

        def refine_shown(state: dict):
            if state["shown"] is None:
                raise InputError("no result is shown to refine; pick one in the gallery")
            return "", "refine", str(engine.job(state["shown"]).video)

        def show_selected(state: dict, event: gr.SelectData):
            state["shown"] = engine.results[len(engine.results) - 1 - event.index].id  # the gallery is newest first
            return ("", state, *_result_outputs(engine, state["shown"]))

        def poll(state: dict):
            mine = [engine.job(job_id) for job_id in state["mine"]]
            newest_done = next((job for job in reversed(mine) if job.state is JobState.DONE), None)
            result = [gr.skip()] * len(result_outputs)
            if newest_done is not None and newest_done.id != state["shown"] and _newer(newest_done, state, engine):
                state["shown"] = newest_done.id
                result = _result_outputs(engine, newest_done.id)
            gallery_value = gr.skip()
            if len(engine.results) != state["gallery"]:
                state["gallery"] = len(engine.results)
                gallery_value = [(str(job.video), views.caption(job)) for job in reversed(engine.results)]
            active = tuple(job.id for job in reversed(mine) if not job.state.finished)  # this page's, newest first
            choices = gr.skip()
            if active != state["choices"]:
                state["choices"] = active
                choices = gr.update(choices=list(active), value=active[0] if active else None)
            header_text = views.header(engine)
            header_value = gr.skip() if header_text == state["header"] else header_text
            state["header"] = header_text
            status_text = views.status_line(mine[-1], engine) if mine else ""
            return (state, views.queue_rows(engine), status_text, choices, gallery_value, header_value, *result)

        inputs = list(fields.values())
        # quick handlers (checks, then queued): the status line, not a spinner, tells how the job goes
        submit.click(guarded(submit_job, 2), [session, *inputs], [error_box, session], show_progress="hidden")
        cancel.click(guarded(cancel_job, 1), [cancel_choice], [error_box], show_progress="hidden")
        refine_result.click(guarded(refine_shown, 3), [session], [error_box, fields["task"], fields["refine_from"]],
                            show_progress="hidden")
        gallery.select(guarded(show_selected, 2 + len(result_outputs)), [session], [error_box, session, *result_outputs],
                       show_progress="hidden")
        poll_outputs = [session, queue, status, cancel_choice, gallery, header, *result_outputs]
        timer.tick(_logged(poll, len(poll_outputs)), [session], poll_outputs, show_progress="hidden")
        fields["task"].change(_task_visibility, [fields["task"]], _visibility_targets(fields))
        fields["resolution"].change(lambda resolution: gr.update(choices=_size_labels(defaults, resolution)),
                                    [fields["resolution"]], [fields["size"]])
    return app


def serve(app: gr.Blocks, *, host: str, port: int, output_dir: Path, max_upload_mb: float, block: bool = True) -> None:
    """Queues and launches the page on host:port: files served from `output_dir` only (`OutputFolderOnly`, and
    Gradio's own allowed paths), uploads up to `max_upload_mb`, no tracebacks in the page, no server-side rendering
    (it would start a Node server). `block=False` returns once it serves (tests; `app.close()` stops it)."""
    app.queue()
    app.launch(server_name=host, server_port=port, allowed_paths=[str(output_dir)], max_file_size=f"{max_upload_mb:g}mb",
               ssr_mode=False, show_error=False, prevent_thread_lock=not block,
               app_kwargs={"middleware": [Middleware(OutputFolderOnly, output_dir=output_dir)]}, **_css(app.launch))


def _css(function: Callable) -> dict:
    """`css=PAGE_CSS` for whichever takes it: `gr.Blocks` in Gradio 5, `Blocks.launch` in Gradio 6."""
    return {"css": PAGE_CSS} if "css" in inspect.signature(function).parameters else {}


def _logged(handler: Callable, outputs: int) -> Callable:
    """`handler`, with any error logged (with its traceback) and the page left as it is."""

    @functools.wraps(handler)
    def run(*args):
        try:
            return handler(*args)
        except Exception:  # the poll runs twice a second: one bad answer must not stop the page's updates
            logger.exception("page handler %s failed", handler.__name__)
            return tuple(gr.skip() for _ in range(outputs))

    return run


def _form_fields(defaults, presets: list[str]) -> dict[str, gr.components.Component]:
    """The form's components, keyed by their `form.FormValues` field."""
    f = {}
    f["task"] = gr.Radio([(label, name) for name, label in TASK_LABELS.items() if name in TASKS], value="t2v",
                         label="Task", elem_id="task")
    f["prompt"] = gr.Textbox(label="Prompt", lines=3, placeholder="empty: a built-in example prompt", elem_id="prompt")
    f["negative_prompt"] = gr.Textbox(label="Negative prompt (used when guidance > 1)", elem_id="negative-prompt",
                                      placeholder="empty: the original demos' list of artefacts to avoid")
    f["image"] = gr.Image(label="Image (i2v: the first frame; refine: an optional condition)", type="filepath",
                          sources=["upload"], format="png", visible=False, elem_id="image")
    f["video"] = gr.Video(label="Video (continuation: the video to continue; refine: an optional condition)",
                          sources=["upload"], visible=False, elem_id="video")
    f["refine_from"] = gr.Video(label="Video to refine (stage 1, taken at 15 fps)", sources=["upload"],
                                visible=False, elem_id="refine-from")
    with gr.Accordion("Size and frames", open=True):
        with gr.Row():
            f["size"] = gr.Dropdown(_size_labels(defaults, "480p"), value=form.SIZE_DEFAULT,
                                    label=f"Size (default {defaults.height}x{defaults.width}; long: its first clip)",
                                    elem_id="size")
            f["height"] = gr.Number(label="Height (custom size)", precision=0)
            f["width"] = gr.Number(label="Width (custom size)", precision=0)
        with gr.Row():
            f["refine_height"] = gr.Number(label="Refinement height (multiple of 64; 0: the 720p bucket)", precision=0)
            f["refine_width"] = gr.Number(label="Refinement width (multiple of 64; 0: the 720p bucket)", precision=0)
        with gr.Row():
            f["resolution"] = gr.Radio(list(RESOLUTIONS), value="480p", label="Bucket table (sizes; i2v, continuation)")
            f["output_size"] = gr.Radio(list(OUTPUT_SIZES), value="input", visible=False,
                                        label="Written at: the input's size, or the generated one")
            f["num_frames"] = gr.Number(label=f"Frames, 1 + 4k (0: {defaults.num_frames})", precision=0,
                                        elem_id="num-frames")
            f["num_cond_frames"] = gr.Number(label=f"Condition frames (0: {defaults.num_cond_frames})",
                                             precision=0, visible=False)
    with gr.Accordion("Sampling", open=True):
        with gr.Row():
            f["num_inference_steps"] = gr.Number(
                label=f"Steps (0: {defaults.num_inference_steps}; distill {defaults.distill_inference_steps})",
                precision=0, elem_id="steps")
            f["refine_inference_steps"] = gr.Number(
                label=f"Refinement steps (0: {defaults.refine_inference_steps}; it starts at t = 0.5)", precision=0)
            f["guidance_scale"] = gr.Number(label=f"Guidance (0: {defaults.guidance_scale}; distill 1)")
            f["seed"] = gr.Textbox(value="42", label="Seed (an integer, or random)", elem_id="seed")
        with gr.Row():
            f["distill"] = gr.Checkbox(label="Distill (cfg_step_lora, fewer steps)")
            f["refine"] = gr.Checkbox(label="Refine to 720p afterwards")
            f["spatial_refine_only"] = gr.Checkbox(label="Refinement keeps the frame count")
            f["num_segments"] = gr.Number(label="Continuation segments (long; 0: 1, or one a segment prompt)",
                                          precision=0, visible=False)
        f["segment_prompts"] = gr.Textbox(label="Segment prompts (long: one a line, a continuation segment each; "
                                          "empty: the prompt for all)", lines=3, visible=False)
    with gr.Accordion("Block-sparse attention (BSA)", open=False):
        f["bsa"] = gr.Dropdown([form.BSA_DEFAULT, *presets, form.BSA_CUSTOM], value=form.BSA_DEFAULT,
                               label="Preset (applies to the refinement when the run has one, else to the generation)")
        with gr.Row():
            f["sparsity"] = gr.Number(value=0.9375, label="Custom: sparsity (fraction of key blocks dropped)")
            f["cdf_threshold"] = gr.Number(label="Custom: CDF threshold (empty: none)")
            f["chunk_q"] = gr.Textbox(value="4,4,4", label="Custom: query chunk t,h,w")
            f["chunk_k"] = gr.Textbox(value="4,4,4", label="Custom: key chunk t,h,w")
    with gr.Accordion("LoRAs and quantization", open=False):
        f["loras"] = gr.Textbox(label="LoRAs: one PATH[:MULTIPLIER] a line (files on the server)", lines=2)
        f["quantize"] = gr.Dropdown(list(QUANTIZE_MODES), value="none", label="DiT quantization", info=QUANTIZE_NOTE)
    return f


def _size_labels(defaults, resolution: str) -> list[str]:
    return form.size_labels(views.size_choices(defaults, resolution))


VISIBLE_BY_TASK = {  # field -> the tasks that show it
    "size": form.SIZED_TASKS,
    "height": form.SIZED_TASKS,
    "width": form.SIZED_TASKS,
    "image": ("i2v", "refine"),
    "video": ("continuation", "refine"),
    "refine_from": ("refine",),
    "num_cond_frames": ("continuation", "long", "refine"),
    **{field: SETTING_READERS[field] for field in ("num_segments", "segment_prompts", "output_size")},
    "distill": ("t2v", "i2v", "continuation", "long"),
    "refine": ("t2v", "i2v", "continuation", "long"),
}


def _visibility_targets(fields: dict) -> list:
    return [fields[name] for name in VISIBLE_BY_TASK]


def _task_visibility(task: str) -> list:
    return [gr.update(visible=task in tasks) for tasks in VISIBLE_BY_TASK.values()]


def _result_outputs(engine: Engine, job_id: str) -> list:
    """The result panel of a done job: video, downloads, settings, timing summary, provenance."""
    job = engine.job(job_id)
    return [str(job.video), [str(job.video), str(job.sidecar)], views.settings_table(job), job.summary,
            job.sidecar.read_text()]


def _newer(job, state: dict, engine: Engine) -> bool:
    """Whether `job` came after the result shown now (a result picked in the gallery stays until a newer one)."""
    return state["shown"] is None or engine.job(state["shown"]).created <= job.created
