"""Provenance: every video gets a `NAME.json` sidecar of what made it; `--from-json NAME.json` makes the same video
again (bit for bit, on the CPU with the built-in model); a sidecar of another format version or with unknown keys is
refused by name; the commit is recorded where there is one, and its absence is no failure."""

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from longcat_jax import generate, provenance
from longcat_jax.errors import ConfigError
from longcat_jax.provenance import (
    FORMAT,
    FORMAT_VERSION,
    TOP_KEYS,
    checkpoint_record,
    read_sidecar,
    request_from_record,
    sidecar_path,
)
from longcat_jax.video_io import OutputError

SMALL = ["--height", "32", "--width", "32", "--num-frames", "5", "--num-inference-steps", "1", "--output-format", "npz",
         "--context-parallel", "1"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A run of the built-in model with a prompt, seed and negative prompt of its own; returns its output."""
    output = tmp_path_factory.mktemp("provenance") / "cat.npz"
    argv = [*SMALL, "--prompt", "A cat", "--negative-prompt", "blurry", "--seed", "7", "--output-path", str(output)]
    assert generate.main(argv) == 0
    return output


def test_the_sidecar_records_what_made_the_video(first_run):
    record = json.loads(sidecar_path(first_run, "npz").read_text())
    assert sidecar_path(first_run, "npz") == first_run.with_name("cat.json")
    assert tuple(record) == TOP_KEYS
    assert (record["format"], record["format_version"]) == (FORMAT, FORMAT_VERSION)
    assert record["command"].startswith("python -m longcat_jax.generate --height 32")
    assert "--prompt 'A cat'" in record["command"]
    assert (record["task"], record["prompt"], record["negative_prompt"], record["seed"]) == ("t2v", "A cat", "blurry", 7)
    assert record["stages"] == [{"stage": "t2v", "height": 32, "width": 32, "num_frames": 5, "num_cond_frames": None,
                                 "num_inference_steps": 1, "guidance_scale": 4.0, "seed": 7, "bsa": None,
                                 "checkpoint_loras": []}]
    assert record["output"] == {"path": str(first_run.resolve()), "format": "npz", "frames": 5, "height": 32,
                                "width": 32, "fps": 15.0}
    assert record["precision"] == {"dtype": "float32", "quantize": "none"}
    assert record["checkpoint"]["builtin"] is True and record["loras"] == [] and record["batch"] is None
    software = record["software"]
    assert software["jax"] and software["devices"] and software["longcat_jax"]
    assert [stage["stage"] for stage in record["timings"]["stages"]] == ["load models", "text encoding",
                                                                         "t2v denoising", "decode"]
    assert record["timings"]["stages"][2]["steps"] == 1
    assert record["request"]["seed"] == 7 and record["request"]["output_path"] == str(first_run.resolve())


def test_from_json_makes_the_same_video_bit_for_bit(first_run, tmp_path, caplog):
    again = tmp_path / "again.npz"
    with caplog.at_level(logging.INFO):
        assert generate.main(["--from-json", str(sidecar_path(first_run, "npz")), "--output-path", str(again)]) == 0
    assert "as recorded" in caplog.text and "differ from the sidecar" not in caplog.text
    with np.load(first_run) as first, np.load(again) as second:
        assert np.array_equal(first["frames"], second["frames"]) and float(first["fps"]) == float(second["fps"])
    assert json.loads(again.with_suffix(".json").read_text())["seed"] == 7


def test_flags_given_with_from_json_replace_the_sidecars_and_the_difference_is_named(first_run, caplog):
    sidecar = sidecar_path(first_run, "npz")
    request, given = generate.parse_command_line(["--from-json", str(sidecar), "--seed", "8"])
    with caplog.at_level(logging.INFO):
        rerun = request_from_record(read_sidecar(sidecar), request, given)
    assert (rerun.seed, rerun.prompt, rerun.negative_prompt, rerun.height) == (8, "A cat", "blurry", 32)
    assert rerun.output_path is None and rerun.from_json is None  # where it goes: the command line's
    assert rerun.context_parallel == 1  # the split of the recorded run (it moves the float rounding)
    assert "the command line replaces the sidecar's --seed" in caplog.text
    recorded = read_sidecar(sidecar)
    planned = provenance.planned_record(generate.plan_run(rerun), rerun)
    assert provenance.differences(recorded, planned) == ["seed", "stages"]


def test_a_recorded_switch_is_turned_off_by_its_no_flag(first_run, caplog):
    """--distill, --refine, --spatial-refine-only and --fsdp recorded on can be switched off in a replay."""
    record = read_sidecar(sidecar_path(first_run, "npz"))
    record["request"].update(distill=True, refine=True, spatial_refine_only=True, fsdp=True)
    flags = ["--no-distill", "--no-refine", "--no-spatial-refine-only", "--no-fsdp"]
    request, given = generate.parse_command_line(["--from-json", "x.json", *flags])
    with caplog.at_level(logging.INFO):
        rerun = request_from_record(record, request, given)
    assert (rerun.distill, rerun.refine, rerun.spatial_refine_only, rerun.fsdp) == (False, False, False, False)
    assert "replaces the sidecar's --distill, --fsdp, --refine, --spatial-refine-only" in caplog.text
    request, given = generate.parse_command_line(["--from-json", "x.json"])
    kept = request_from_record(record, request, given)
    assert (kept.distill, kept.refine, kept.spatial_refine_only, kept.fsdp) == (True, True, True, True)


def test_a_split_over_more_devices_than_here_falls_back_with_a_warning(first_run, tmp_path, caplog):
    import jax

    record = json.loads(sidecar_path(first_run, "npz").read_text())
    path = _sidecar(tmp_path, first_run, request={**record["request"], "context_parallel": jax.device_count() + 1})
    request, given = generate.parse_command_line(["--from-json", str(path)])
    with caplog.at_level(logging.WARNING):
        assert request_from_record(read_sidecar(path), request, given).context_parallel is None
    assert "the float rounding (the video) can differ slightly" in caplog.text


def _sidecar(tmp_path: Path, first_run: Path, **changes) -> Path:
    record = {**json.loads(sidecar_path(first_run, "npz").read_text()), **changes}
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(record))
    return path


def test_another_format_version_is_refused(first_run, tmp_path, caplog):
    path = _sidecar(tmp_path, first_run, format_version=2)
    with pytest.raises(ConfigError, match="has format version 2; this longcat_jax .* reads version 1"):
        read_sidecar(path)
    with caplog.at_level(logging.ERROR):
        assert generate.main(["--from-json", str(path)]) == 2
    with pytest.raises(ConfigError, match="is not a longcat_jax sidecar"):
        read_sidecar(_sidecar(tmp_path, first_run, format="something else"))


def test_unknown_keys_and_bad_request_values_are_refused_each_named(first_run, tmp_path):
    record = json.loads(sidecar_path(first_run, "npz").read_text())
    request = {**record["request"], "stride": 2, "height": "tall", "task": "bogus", "dtype": "float16"}
    path = _sidecar(tmp_path, first_run, comment="mine", request=request,
                    precision={**record["precision"], "tf32": True})
    with pytest.raises(ConfigError) as err:
        read_sidecar(path)
    message = str(err.value)
    for named in ("unknown key 'comment'", "unknown key 'precision.tf32'", "request.stride: unknown field",
                  "request.height: 'tall' is not", "request.task: 'bogus' is not one of 't2v'",
                  "request.dtype: 'float16' is not one of 'bfloat16', 'float32'"):
        assert named in message


def test_a_run_again_does_not_write_over_the_video_it_replays(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # the default output path: outputs/longcat_t2v.npz here
    assert generate.main([*SMALL, "--seed", "7"]) == 0
    original = (tmp_path / "outputs" / "longcat_t2v.npz").read_bytes()
    assert generate.main(["--from-json", "outputs/longcat_t2v.json", "--seed", "8"]) == 2
    assert "would write over the video it describes" in caplog.text and "pass --output-path" in caplog.text
    assert (tmp_path / "outputs" / "longcat_t2v.npz").read_bytes() == original


def test_checkpoint_fingerprint_covers_its_config_and_index_files(tmp_path):
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "config.json").write_text('{"depth": 2}')
    (tmp_path / "dit" / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (tmp_path / "dit" / "model.safetensors").write_bytes(b"weights are not hashed")
    record = checkpoint_record(Path("my/checkpoint"), tmp_path)
    assert sorted(record["files"]) == ["dit/config.json", "dit/model.safetensors.index.json"]
    assert record["model_path"] == "my/checkpoint" and record["folder"] == str(tmp_path.resolve())
    (tmp_path / "dit" / "config.json").write_text('{"depth": 3}')
    assert checkpoint_record(Path("my/checkpoint"), tmp_path)["fingerprint"] != record["fingerprint"]


def test_no_git_is_no_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)  # an installed package: no checkout around it
    assert provenance._git_state() == (None, None)
    (tmp_path / ".git").mkdir()
    (tmp_path / "longcat_jax").mkdir()
    (tmp_path / "longcat_jax" / "__init__.py").write_text("")

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert provenance._git_state() == (None, None)


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_failed_video_write_leaves_the_sidecar_that_was_there(first_run, tmp_path, monkeypatch, overwrite):
    output = tmp_path / "cat.npz"
    sidecar = sidecar_path(output, "npz")
    if overwrite:
        output.write_bytes(first_run.read_bytes())
        sidecar.write_bytes(sidecar_path(first_run, "npz").read_bytes())
    before = {path: path.read_bytes() for path in (output, sidecar) if path.exists()}

    def failing_write(path, *args):
        raise OutputError(f"cannot write {path}: disk gone; nothing was written; choose another --output-path")

    monkeypatch.setattr(provenance, "save_video", failing_write)
    assert generate.main([*SMALL, "--seed", "8", "--output-path", str(output)]) == 2
    assert {path: path.read_bytes() for path in (output, sidecar) if path.exists()} == before


def test_a_batch_items_run_again_alone_is_said_to_differ_slightly(first_run, tmp_path, caplog):
    path = _sidecar(tmp_path, first_run, batch={"file": str(tmp_path / "items.jsonl"), "line": 1, "denoised_with": [2]})
    with caplog.at_level(logging.WARNING):
        assert generate.main(["--from-json", str(path), "--output-path", str(tmp_path / "again.npz")]) == 0
    assert "denoised in one batch with the items of lines 2; made alone" in caplog.text


def test_a_run_again_names_an_input_file_edited_since(tmp_path, caplog):
    image = tmp_path / "frame.png"
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    first = tmp_path / "first.npz"
    assert generate.main([*SMALL, "--task", "i2v", "--image", str(image), "--output-path", str(first)]) == 0
    record = json.loads(sidecar_path(first, "npz").read_text())
    assert [entry["flag"] for entry in record["inputs"]] == ["--image"]
    moved = tmp_path / "moved.png"
    image.rename(moved)  # the same contents elsewhere: the same input
    sidecar = sidecar_path(first, "npz")
    with caplog.at_level(logging.INFO):
        assert generate.main(["--from-json", str(sidecar), "--image", str(moved), "--output-path",
                              str(tmp_path / "again.npz")]) == 0
    assert "inputs (" not in caplog.text
    PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(moved)  # other pixels
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert generate.main(["--from-json", str(sidecar), "--image", str(moved), "--output-path",
                              str(tmp_path / "third.npz")]) == 0
    assert "inputs (--image: other files or other contents)" in caplog.text


def test_a_run_again_with_other_code_names_it(first_run, tmp_path, caplog):
    record = json.loads(sidecar_path(first_run, "npz").read_text())
    path = _sidecar(tmp_path, first_run, software={**record["software"], "commit": "0" * 40, "longcat_jax": "0.0.1"})
    with caplog.at_level(logging.WARNING):
        assert generate.main(["--from-json", str(path), "--output-path", str(tmp_path / "again.npz")]) == 0
    assert "software.longcat_jax, software.commit differ from the sidecar's" in caplog.text


@pytest.fixture(scope="module")
def i2v_run(tmp_path_factory) -> Path:
    """An i2v run from a 40x56 image (its bucket is another size): returns its output."""
    folder = tmp_path_factory.mktemp("i2v_provenance")
    image = folder / "frame.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    output = folder / "i2v.npz"
    assert generate.main([*SMALL, "--task", "i2v", "--image", str(image), "--output-path", str(output)]) == 0
    return output


def _replay(record: dict, *argv: str):
    """(the request of `record` replayed with `argv`, its plan, the differences from the record)."""
    request, given = generate.parse_command_line(["--from-json", "x.json", *argv])
    rerun = request_from_record(record, request, given)
    plan = generate.plan_run(rerun)
    return rerun, plan, provenance.differences(record, provenance.planned_record(plan, rerun))


def test_an_i2v_sidecar_from_before_output_size_replays_at_the_generated_size(i2v_run):
    record = read_sidecar(sidecar_path(i2v_run, "npz"))
    assert (record["output"]["height"], record["output"]["width"]) == (40, 56)  # written at the image's size
    assert _replay(record)[2] == []
    _, height, width = _replay(record, "--output-size", "generated")[1].stages.output_shape  # the bucket
    assert (height, width) != (40, 56)
    del record["request"]["output_size"]  # as sidecars written before the flag
    record["output"].update(height=height, width=width)  # i2v was written at its bucket then
    rerun, plan, found = _replay(record)
    assert rerun.output_size == "generated" and plan.stages.output_shape[1:] == (height, width) and found == []


def test_a_replay_at_another_output_size_names_it(i2v_run):
    record = read_sidecar(sidecar_path(i2v_run, "npz"))
    _, plan, found = _replay(record, "--output-size", "generated")
    _, height, width = plan.stages.output_shape
    assert found == [f"output (5 frames of 40x56 recorded, 5 of {height}x{width} planned)"]


def test_no_refine_replays_a_refined_sidecar_without_its_refinement(i2v_run, caplog):
    record = read_sidecar(sidecar_path(i2v_run, "npz"))
    record["request"].update(refine=True, refine_height=128, refine_width=128)
    with caplog.at_level(logging.WARNING):
        rerun, plan, _ = _replay(record, "--no-refine")
    assert not rerun.refine and plan.stages.refinement is None
    assert "--refine-height is a setting of the refinement stage, which this run does not have" in caplog.text


def test_sidecars_from_before_num_segments_defaulted_to_none_replay_as_made(first_run, caplog):
    """They recorded the old default, 1: a t2v run is not warned of an unread --num-segments, and a long video of
    several segment prompts (then one segment a prompt) replays with one a prompt."""
    record = read_sidecar(sidecar_path(first_run, "npz"))
    record["request"]["num_segments"] = 1
    with caplog.at_level(logging.WARNING):
        _replay(record)
    assert "--num-segments" not in caplog.text
    record["request"].update(task="long", num_cond_frames=1, segment_prompts=["a", "b"])
    rerun, plan, _ = _replay(record)
    assert rerun.num_segments is None and plan.stages.generation.num_segments == 2
