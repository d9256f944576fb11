"""The task registry: the CLI offers the table's tasks, its shared checks read the table, every task plans its
stages before any model is loaded, `--bsa-config` goes to the right stage, and the log says each stage's BSA."""

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from longcat_jax import generate
from longcat_jax.errors import InputError
from longcat_jax.pipelines import continuation, i2v, long_video, refine, t2v, tasks
from longcat_jax.pipelines.options import GeneratedVideo
from longcat_jax.pipelines.request import RunRequest, read_inputs
from longcat_jax.pipelines.tasks import TASKS, Task, plan_run
from longcat_jax.video_io import resize_frames, write_mp4
from tests.helpers.task_inputs import write_task_inputs

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "bsa"
NO_BSA = str(PRESETS / "config_480p_no_bsa.json")
SMALL = ("--height", "64", "--width", "64", "--num-frames", "5")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    return write_task_inputs(tmp_path_factory.mktemp("inputs"))


def _plan(*argv: str):
    return plan_run(generate.parse_request(list(argv)))


def test_the_cli_offers_the_tables_tasks_and_its_request_is_the_clis():
    parser = generate.build_parser()
    task_flag = next(action for action in parser._actions if action.dest == "task")
    assert tuple(task_flag.choices) == tuple(TASKS) == ("t2v", "i2v", "continuation", "long", "refine")
    assert generate.parse_request([]) == RunRequest()  # one field per flag, the same defaults
    modules = {"t2v": t2v, "i2v": i2v, "continuation": continuation, "long": long_video, "refine": refine}
    for name, task in TASKS.items():  # each task's plan and run live in its own module
        assert (task.plan, task.run) == (modules[name].plan_task, modules[name].run_task)
    with pytest.raises(SystemExit):
        generate.build_parser().parse_args(["--task", "echo"])


@pytest.mark.parametrize("changes, message", [
    ({"prompt": ""}, "the prompt is empty"),
    ({"prompt": " \n "}, "the prompt is empty"),
    ({"task": "long", "segment_prompts": ("a dog runs", " ")}, "a segment prompt is empty"),
])
def test_blank_prompts_are_refused_before_any_work(changes, message):
    with pytest.raises(InputError, match=message):
        plan_run(RunRequest(**changes))


def test_the_refinement_alone_takes_an_empty_prompt(inputs):
    plan = plan_run(RunRequest(task="refine", refine_from=Path(inputs["video"]), prompt=""))
    assert plan.setup.prompt == ""


def test_the_shared_checks_read_the_table(monkeypatch, inputs):
    echo = Task("echo", reads=("video", "image"), requires={"video": "PATH (the clip to echo)"}, one_of=("video", "image"),
                plan=t2v.plan_task, run=t2v.run_task)
    monkeypatch.setitem(TASKS, "echo", echo)
    request = RunRequest(task="echo")
    with pytest.raises(InputError, match=r"--task echo needs --video PATH \(the clip to echo\)"):
        plan_run(request)
    with pytest.raises(InputError, match="--task echo takes one condition: --video or --image, not both"):
        plan_run(dataclasses.replace(request, image=Path(inputs["image"]), video=Path(inputs["video"])))
    with pytest.raises(InputError, match="--image is read by --task i2v or refine or echo, not by --task t2v"):
        plan_run(RunRequest(image=Path(inputs["image"])))
    with pytest.raises(InputError, match="--refine-from is read by --task refine, not by --task echo; --refine refines"):
        plan_run(dataclasses.replace(request, task="echo", refine_from=Path(inputs["video"])))
    with pytest.raises(InputError, match="--refine runs stage 2 after a generation task; --task refine is stage 2 alone"):
        plan_run(RunRequest(task="refine", refine=True, refine_from=Path(inputs["video"])))


@pytest.mark.parametrize(
    "argv, generation, refinement",
    [
        ((), t2v.GenerationPlan, type(None)),
        (("--refine",), t2v.GenerationPlan, refine.RefinePlan),
        (("--task", "i2v", "--image", "IMAGE", "--refine"), t2v.GenerationPlan, refine.RefinePlan),
        (("--task", "continuation", "--video", "VIDEO", "--num-cond-frames", "1", "--refine"),
         continuation.ContinuationPlan, refine.RefinePlan),
        (("--task", "long", "--num-cond-frames", "1", "--refine"), long_video.LongVideoPlan, long_video.WindowedRefinePlan),
        (("--refine-from", "VIDEO", "--image", "IMAGE"), type(None), refine.RefinePlan),
    ],
)
def test_every_task_plans_its_stages_before_any_model(inputs, argv, generation, refinement):
    argv = [inputs["image"] if a == "IMAGE" else inputs["video"] if a == "VIDEO" else a for a in argv]
    plan = _plan(*argv, *SMALL)
    assert isinstance(plan.stages.generation, generation)
    assert isinstance(plan.stages.refinement, refinement)
    assert plan.setup.refine_prompt == ("" if plan.task.name in ("long", "refine") else plan.setup.prompt)


def _bsa_lines(caplog, *argv: str) -> list[str]:
    """What `python -m longcat_jax.generate ARGV 2>&1 | grep -i bsa` shows of the planning."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _plan(*argv)
    return [r.getMessage() for r in caplog.records if "bsa" in f"{r.name} {r.getMessage()}".lower()]


def test_the_log_says_each_stages_bsa(caplog, inputs):
    """Issue 23, workflow 6: every stage says whether BSA is on (with its parameters), off, or skipped, and why."""
    params = '{"sparsity": 0.75, "cdf_threshold": null, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]}'
    assert _bsa_lines(caplog, "--refine") == [
        "BSA off for t2v: dense attention (dit/config.json has enable_bsa false)",
        f"BSA on for refinement: {params} (the refinement default: on, with the checkpoint's bsa_params)",
    ]
    assert _bsa_lines(caplog, "--refine", "--bsa-config", NO_BSA)[-1] == (
        "BSA off for refinement: dense attention (as asked (--bsa-config or the task's bsa option))"
    )
    balanced = str(PRESETS / "config_720p_balanced.json")
    assert _bsa_lines(caplog, "--num-frames", "1", "--bsa-config", balanced) == [
        "BSA skipped for t2v: one latent frame (BSA applies to videos of more than one latent frame)"
    ]
    lines = _bsa_lines(caplog, "--task", "long", "--num-cond-frames", "1", *SMALL)
    assert [line.split(":")[0] for line in lines] == ["BSA off for t2v", "BSA off for continuation"]


def test_bsa_config_goes_to_the_refinement_when_there_is_one(inputs):
    fast = str(PRESETS / "config_720p_fast.json")
    alone = _plan("--bsa-config", fast, "--height", "128", "--width", "256", "--num-frames", "13")
    assert alone.stages.generation.bsa.sparsity == 0.96875
    refined = _plan("--bsa-config", fast, "--refine")
    assert refined.stages.generation.bsa is None  # stage 1 follows dit/config.json
    assert refined.stages.refinement.bsa.sparsity == 0.96875
    assert _plan("--refine-from", inputs["video"], "--bsa-config", fast).stages.refinement.bsa.sparsity == 0.96875



def test_the_refinement_says_its_size_and_the_flags_set_it(caplog, inputs):
    """Issue 18: --refine after a small stage 1 picks the 720p bucket: the log says so before anything runs, and
    --refine-height/--refine-width (multiples of 64) set another size."""
    with caplog.at_level(logging.INFO):
        plan = _plan("--refine", *SMALL)
    bucket = plan.stages.refinement
    assert (f"Refinement: {bucket.height}x{bucket.width} (height x width; the 720p bucket nearest its aspect ratio; "
            "--refine-height/--refine-width set it) from the 64x64 stage 1, 10 frames") in caplog.text
    chosen = _plan("--refine", "--refine-height", "128", "--refine-width", "192", *SMALL)
    assert chosen.stages.refinement.shape == chosen.stages.output_shape == (10, 128, 192)
    refined = _plan("--refine-from", inputs["video"], "--refine-height", "64", "--refine-width", "128").stages.refinement
    assert (refined.height, refined.width) == (64, 128)
    with pytest.raises(InputError, match="give one pair"):
        _plan("--refine-from", inputs["video"], "--height", "64", "--refine-height", "64", "--refine-width", "128")


@pytest.mark.parametrize(
    "argv",
    [
        (),
        ("--refine",),
        ("--task", "i2v", "--image", "IMAGE", "--refine"),
        ("--task", "continuation", "--video", "VIDEO", "--num-cond-frames", "1"),
        ("--task", "continuation", "--video", "VIDEO", "--num-cond-frames", "1", "--refine"),
        ("--task", "long", "--num-cond-frames", "1", "--num-segments", "2"),
        ("--task", "long", "--num-cond-frames", "1", "--num-segments", "2", "--refine", "--spatial-refine-only"),
        ("--refine-from", "VIDEO", "--image", "IMAGE"),
    ],
)
def test_the_planned_output_shape_is_what_the_task_returns(inputs, monkeypatch, argv):
    """The free-space and memory checks size the output by `stages.output_shape`. Each task's runner, with its
    stages replaced by blank frames of the planned sizes (the joining and windowing are real), returns that shape."""
    def blank(plan):
        return np.zeros((plan.num_frames, plan.height, plan.width, 3), np.uint8)

    fakes = {
        "run_t2v": lambda pipe, prompt, plan: GeneratedVideo(blank(plan), 15.0),
        "run_i2v": lambda pipe, image, prompt, plan: GeneratedVideo(blank(plan), 15.0),
        "run_continuation": lambda pipe, video, prompt, plan: GeneratedVideo(blank(plan), 15.0),
        "run_refine": lambda pipe, stage1, prompt, plan, **_: GeneratedVideo(blank(plan), plan.fps),
    }
    for module in (t2v, i2v, continuation, long_video, refine):
        for name, fake in fakes.items():
            if hasattr(module, name):
                monkeypatch.setattr(module, name, fake)
    argv = [inputs["image"] if a == "IMAGE" else inputs["video"] if a == "VIDEO" else a for a in argv]
    plan = _plan(*argv, *SMALL)
    video = plan.task.run(None, plan.setup, plan.stages)
    assert video.frames.shape[:3] == plan.stages.output_shape


@pytest.mark.parametrize("argv, warning", [
    (("--task", "i2v", "--image", "image", "--height", "256", "--width", "256"),
     "--height is read by --task t2v or long or refine, not by --task i2v; it takes the bucket of --resolution"),
    (("--task", "refine", "--refine-from", "video", "--num-inference-steps", "7"),
     "--num-inference-steps is read by --task t2v or i2v or continuation or long, not by --task refine; the "
     "refinement's steps: --refine-inference-steps"),
    (("--task", "refine", "--refine-from", "video", "--distill"), "--distill is read by"),
    (("--num-cond-frames", "5"), "--num-cond-frames is read by --task continuation or long or refine, not by --task t2v"),
    (("--num-segments", "3"), "--num-segments is read by --task long, not by --task t2v"),
    (("--resolution", "720p"), "--resolution is read by --task i2v or continuation or long, not by --task t2v"),
    (("--refine-inference-steps", "5"), "--refine-inference-steps is a setting of the refinement stage"),
    (("--spatial-refine-only",), "--spatial-refine-only is a setting of the refinement stage"),
    (("--refine-height", "128", "--refine-width", "128"), "--refine-height is a setting of the refinement stage"),
])
def test_a_setting_the_task_does_not_read_is_named_in_a_warning(inputs, caplog, argv, warning):
    argv = [str(inputs.get(a, a)) for a in argv]
    with caplog.at_level(logging.WARNING):
        _plan(*SMALL, *argv)
    assert warning in caplog.text


@pytest.mark.parametrize("argv", [
    (*SMALL, "--task", "long", "--num-cond-frames", "1", "--num-segments", "2", "--resolution", "720p"),
    (*SMALL, "--refine", "--refine-inference-steps", "3", "--spatial-refine-only"),
    ("--task", "refine", "--refine-from", "video", "--height", "64", "--refine-inference-steps", "3"),
])
def test_settings_the_task_reads_give_no_warning(inputs, caplog, argv):
    with caplog.at_level(logging.WARNING):
        _plan(*[str(inputs.get(a, a)) for a in argv])
    assert "is read by" not in caplog.text and "setting of the refinement" not in caplog.text


def test_a_15_fps_video_keeps_its_timing_as_the_30_fps_refinements_condition(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    clip = write_mp4(tmp_path / "clip15.mp4", frames, fps=15)
    inputs = read_inputs(RunRequest(task="continuation", video=clip, refine=True))
    assert len(inputs.video) == 9 and len(inputs.refine_video) == 18  # each frame twice at 30 fps
    spatial = read_inputs(RunRequest(task="continuation", video=clip, refine=True, spatial_refine_only=True))
    assert len(spatial.refine_video) == 9


@pytest.mark.parametrize("fps, warned", [(7.5, False), (10.5, True), (15, False)])
def test_a_stage1_video_no_stride_or_repeat_brings_to_15_fps_is_warned_of(tmp_path, caplog, fps, warned):
    clip = write_mp4(tmp_path / "stage1.mp4", np.zeros((6, 32, 32, 3), np.uint8), fps=fps)
    with caplog.at_level(logging.WARNING):
        read_inputs(RunRequest(task="refine", refine_from=clip))
    assert ("so the output plays faster than the input" in caplog.text) == warned


@pytest.mark.parametrize("refine_flag", [(), ("--refine",)], ids=["generated", "refined"])
def test_i2v_and_continuation_are_written_at_the_inputs_size_unless_asked_otherwise(inputs, refine_flag):
    """As the original's i2v and continuation demos write them: at the input image's or video's size; with
    `--output-size generated` at the size the model made (the bucket, or the refinement's)."""
    cases = {"i2v": ("--image", inputs["image"], (48, 48)), "continuation": ("--video", inputs["video"], (64, 64))}
    for task, (flag, path, input_size) in cases.items():
        argv = ("--task", task, flag, path, "--num-frames", "5", "--num-cond-frames", "1", *refine_flag)
        plan = _plan(*argv)
        generated = plan.stages.refinement or plan.stages.generation
        assert plan.stages.output_shape[1:] == input_size
        assert _plan(*argv, "--output-size", "generated").stages.output_shape[1:] == (generated.height, generated.width)
    assert (generated.height, generated.width) != (64, 64)  # the refined continuation: another size than its input


def test_i2v_resizes_its_frames_to_the_planned_output(inputs, monkeypatch):
    """run_task resizes the made video (bicubic, the demo's filter) to the plan's output size, or leaves it."""
    argv = ("--task", "i2v", "--image", inputs["image"], "--num-frames", "5", "--output-size")
    size = _plan(*argv, "generated").stages.generation.size  # the bucket
    made = np.random.default_rng(1).integers(0, 256, (5, *size, 3), dtype=np.uint8)
    monkeypatch.setattr(i2v, "run_i2v", lambda *args: GeneratedVideo(made, 15.0))
    for output_size, expected in (("input", resize_frames(made, 48, 48, "bicubic")), ("generated", made)):
        plan = _plan(*argv, output_size)
        np.testing.assert_array_equal(i2v.run_task(None, plan.setup, plan.stages).frames, expected)


def test_segment_prompts_set_the_long_videos_segments_and_encode_with_the_others(caplog, monkeypatch):
    """--segment-prompt, repeated: one continuation each (--num-segments defaults to their count); every prompt is
    encoded before the text encoder is released; other tasks warn that they do not read it."""
    argv = ("--task", "long", "--num-cond-frames", "1", *SMALL, "--segment-prompt", "It turns", "--segment-prompt",
            "It stops")
    plan = _plan(*argv)
    assert plan.stages.generation.num_segments == 2
    assert plan.stages.generation.segment_prompts == ("It turns", "It stops")
    assert plan.stages.output_shape == (5 + 2 * 4, 64, 64)
    for count in ("1", "3"):
        with pytest.raises(InputError, match=f"2 --segment-prompt for {count} segments"):
            _plan(*argv, "--num-segments", count)
    assert _plan("--task", "long", "--num-cond-frames", "1", *SMALL).stages.generation.num_segments == 1
    encoded = []

    class Pipe:
        def encode_text(self, prompt, negative=None):
            encoded.append(prompt)

        def release_text_encoder(self):
            encoded.append("released")

    tasks.encode_prompts(Pipe(), [plan])
    assert encoded[:3] == [plan.setup.prompt, "It turns", "It stops"] and encoded[-1] == "released"
    with caplog.at_level(logging.WARNING):
        _plan("--segment-prompt", "It turns", *SMALL)
    assert "--segment-prompt is read by --task long, not by --task t2v" in caplog.text
