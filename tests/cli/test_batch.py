"""Batch generation (`--prompts FILE`): the models load once for the file, t2v items of one shape go through the DiT
together (`--batch-size`) and give the videos one at a time gives, items whose output exists are skipped (resume),
a bad item is reported and skipped while the rest go on, the exit status and the summary count the failures, and a
bad JSONL line is refused with its number and key before any model loads."""

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from longcat_jax import batch, generate
from longcat_jax.errors import ConfigError
from longcat_jax.pipelines.options import GenerationOptions
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.t2v import plan_t2v, run_t2v
from longcat_jax.pipelines.t2v_batch import run_t2v_batch
from longcat_jax.prompts_file import PromptItem, read_prompts_file
from longcat_jax.provenance import sidecar_path
from longcat_jax.video_io import OutputError

SMALL = ["--height", "32", "--width", "32", "--num-frames", "5", "--num-inference-steps", "1", "--output-format", "npz",
         "--context-parallel", "1"]
ITEMS = [
    {"prompt": "a cat", "seed": 1},
    {"prompt": "a dog", "seed": 2, "negative_prompt": "", "output": "dog.npz"},
    None,  # a blank line
    {"prompt": "a size the VAE cannot take", "height": 100},
    {"prompt": "a bird", "seed": 3},
]


def _write_jsonl(path: Path, items) -> Path:
    path.write_text("".join("\n" if item is None else json.dumps(item) + "\n" for item in items))
    return path


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    """The ITEMS file run with --batch-size 2: lines 1 and 2 denoised together, line 4 failing its checks."""
    folder = tmp_path_factory.mktemp("batch")
    prompts = _write_jsonl(folder / "prompts.jsonl", ITEMS)
    argv = ["--prompts", str(prompts), "--output-path", str(folder / "videos"), "--batch-size", "2", *SMALL]
    return argv, folder / "videos", generate.main(argv)


def test_a_batch_writes_each_good_item_with_its_sidecar_and_counts_the_failure(batch_run):
    _, videos, status = batch_run
    assert status == batch.EXIT_ITEMS_FAILED
    assert sorted(path.name for path in videos.iterdir()) == ["0001_a-cat.json", "0001_a-cat.npz", "0005_a-bird.json",
                                                             "0005_a-bird.npz", "dog.json", "dog.npz"]
    cat = json.loads(sidecar_path(videos / "0001_a-cat.npz", "npz").read_text())
    assert (cat["prompt"], cat["seed"], cat["batch"]["line"], cat["batch"]["denoised_with"]) == ("a cat", 1, 1, [2])
    assert cat["command"].startswith("python -m longcat_jax.generate --prompts ")
    assert cat["request"]["prompts"] is None and cat["request"]["batch_size"] == 1  # the item's own request
    bird = json.loads(sidecar_path(videos / "0005_a-bird.npz", "npz").read_text())
    assert bird["batch"]["denoised_with"] == [] and bird["seed"] == 3
    for sidecar in (cat, json.loads(sidecar_path(videos / "dog.npz", "npz").read_text())):  # denoised together
        names = [stage["stage"] for stage in sidecar["timings"]["stages"]]
        assert names.count("decode") == 1 and not any(name.startswith("decode #") for name in names), names
    with np.load(videos / "dog.npz") as dog, np.load(videos / "0001_a-cat.npz") as cat_video:
        assert dog["frames"].shape == (5, 32, 32, 3) and not np.array_equal(dog["frames"], cat_video["frames"])


def test_a_second_run_resumes_skipping_what_exists(batch_run, monkeypatch, capsys):
    argv, _, _ = batch_run
    monkeypatch.setattr(batch, "load_pipeline", lambda *args: pytest.fail("nothing was left to load models for"))
    assert generate.main(argv) == batch.EXIT_ITEMS_FAILED
    summary = capsys.readouterr().err
    assert "skipped (output exists)            3" in summary and "failed                             1" in summary
    assert "line 4: height and width must be positive multiples of 16, got 100x32" in summary


def test_a_failure_while_running_skips_that_item_alone(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "two.txt"
    prompts.write_text("this one fails\n\nthis one is written\n")
    real_write = batch.write_video_and_sidecar

    def write(plan, *args, **kwargs):
        if plan.setup.prompt == "this one fails":
            raise OutputError("no space left on device writing it")
        return real_write(plan, *args, **kwargs)

    monkeypatch.setattr(batch, "write_video_and_sidecar", write)
    assert generate.main(["--prompts", str(prompts), "--output-path", str(tmp_path / "out"), *SMALL]) == 1
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["0003_this-one-is-written.json",
                                                                         "0003_this-one-is-written.npz"]
    summary = capsys.readouterr().err
    assert "written                            1" in summary and "line 1: no space left on device" in summary


def test_batched_videos_equal_those_made_one_at_a_time():
    """Two prompts, seeds and negative prompts through the DiT together: each video is the one-at-a-time video up
    to float rounding (batched matmuls round differently: at most one level of 255 here)."""
    pipe = LongCatPipeline.builtin()
    plans = [plan_t2v(GenerationOptions(height=32, width=32, num_frames=5, num_inference_steps=2, seed=seed,
                                        negative_prompt=negative), pipe.plan_context)
             for seed, negative in ((1, "blurry"), (2, ""))]
    prompts = ["a cat", "a dog running"]
    alone = [run_t2v(pipe, prompt, plan).frames.astype(np.int16) for prompt, plan in zip(prompts, plans)]
    together = [video.frames.astype(np.int16) for video in run_t2v_batch(pipe, prompts, plans)]
    swapped = [video.frames.astype(np.int16) for video in run_t2v_batch(pipe, prompts[::-1], plans[::-1])][::-1]
    for one, batched, other_order in zip(alone, together, swapped):
        assert np.abs(one - batched).max() <= 1 and np.mean(one != batched) < 0.01
        assert np.abs(one - other_order).max() <= 1
    assert np.abs(alone[0] - alone[1]).mean() > 10  # the batch rows stay two different videos


def test_bad_jsonl_lines_are_refused_by_number_before_any_model_loads(tmp_path, monkeypatch, caplog):
    prompts = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, {"prompt": "x", "sed": 3}, None,
                                                    {"prompt": 5, "height": "tall"}, {"segment_prompts": "a"}])
    with (tmp_path / "bad.jsonl").open("a") as file:
        file.write("not json\n")
    monkeypatch.setattr(batch, "plan_context", lambda *args: pytest.fail("the checkpoint was read"))
    with caplog.at_level(logging.ERROR):
        assert generate.main(["--prompts", str(prompts)]) == 2
    for named in ("line 2: unknown key 'sed'", "line 4: 'prompt' must be a string, got 5",
                  "line 4: 'height' must be an integer, got 'tall'",
                  "line 5: 'segment_prompts' must be a list of strings, got 'a'", "line 6: not valid JSON"):
        assert named in caplog.text
    assert ("any of the keys prompt, negative_prompt, seed, image, video, num_frames, height, width, segment_prompts, "
            "output") in caplog.text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", "a cat"], "--prompt and --prompts FILE are two ways"),
        (["--batch-size", "0"], "--batch-size must be 1 or more"),
        (["--batch-size", "2", "--max-device-memory", "24GiB"], "--max-device-memory plans one video at a time"),
        (["--output-path", "videos.mp4"], "--output-path is the folder the videos go into"),
        (["--from-json", "x.json"], "--prompts FILE runs a file of prompts and --from-json"),
    ],
)
def test_refusals_of_a_batch(argv, message, tmp_path, caplog):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    with caplog.at_level(logging.ERROR):
        assert generate.main(["--prompts", str(prompts), *argv]) == 2
    assert message in caplog.text


def test_batch_size_without_prompts_and_an_empty_file_are_refused(tmp_path, caplog):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with caplog.at_level(logging.ERROR):
        assert generate.main(["--batch-size", "2"]) == 2
        assert generate.main(["--prompts", str(tmp_path / "empty.txt")]) == 2
        assert generate.main(["--prompts", str(tmp_path / "missing.txt")]) == 2
        assert generate.main(["--prompts", str(tmp_path)]) == 2
    assert "--batch-size groups the items of --prompts FILE" in caplog.text
    assert "has no prompts" in caplog.text and "missing.txt not found" in caplog.text
    assert f"prompts file {tmp_path} is not a regular file" in caplog.text


def test_item_requests_and_their_outputs(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    prompts = _write_jsonl(lists / "mine.jsonl", [
        {"prompt": "A Cat, walking!  Slowly over the kitchen floor today", "image": "cat.png"},
        {"output": "sub/named", "video": "/abs/clip.mp4", "seed": 9},
    ])
    request = generate.parse_request(["--prompts", str(prompts), "--task", "i2v", "--seed", "5"])
    first, second = (batch.item_request(request, item) for item in read_prompts_file(prompts))
    assert first.output_path == Path("outputs/mine/0001_a-cat-walking-slowly-over-the.mp4")
    assert first.image == lists / "cat.png"  # relative inputs are read from the file's folder
    assert (first.seed, first.task, first.prompts) == (5, "i2v", None)
    assert second.output_path == Path("outputs/mine/sub/named.mp4") and second.video == Path("/abs/clip.mp4")
    assert (second.seed, second.prompt) == (9, None)  # no prompt: the task's default


def test_a_long_video_item_takes_its_segment_prompts(tmp_path):
    prompts = _write_jsonl(tmp_path / "long.jsonl", [{"prompt": "bread", "segment_prompts": ["milk", "a sip"]},
                                                    {"prompt": "a dog"}])
    request = generate.parse_request(["--prompts", str(prompts), "--task", "long", "--num-cond-frames", "1",
                                      "--height", "64", "--width", "64", "--num-frames", "5"])
    first, second = (batch.item_request(request, item) for item in read_prompts_file(prompts))
    assert (first.segment_prompts, second.segment_prompts) == (("milk", "a sip"), ())
    assert batch.plan_run(first).stages.generation.segment_prompts == ("milk", "a sip")



def test_a_json_file_is_read_as_json_lines_or_an_array(tmp_path):
    lines = _write_jsonl(tmp_path / "lines.json", [{"prompt": "a cat", "seed": 7}, None, {"prompt": "a dog"}])
    items = read_prompts_file(lines)
    assert [(item.line, item.values) for item in items] == [(1, {"prompt": "a cat", "seed": 7}),
                                                            (3, {"prompt": "a dog"})]
    array = tmp_path / "array.json"
    array.write_text('\n[\n  {"prompt": "a cat",\n   "seed": 7},\n\n  {"prompt": "a dog"}, {"prompt": "a bird"}\n]\n')
    assert [(item.line, item.values) for item in read_prompts_file(array)] == [
        (3, {"prompt": "a cat", "seed": 7}), (6, {"prompt": "a dog"}), (6, {"prompt": "a bird"})]
    one = tmp_path / "one.json"
    one.write_text('{\n  "prompt": "a cat",\n  "seed": 7\n}\n')
    assert [(item.line, item.values) for item in read_prompts_file(one)] == [(1, {"prompt": "a cat", "seed": 7})]
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ConfigError, match="has no prompts"):
        read_prompts_file(tmp_path / "empty.json")
    (tmp_path / "broken.json").write_text('[\n  {"prompt": "a cat"}\n  {"prompt": "a dog"}\n]')
    with pytest.raises(ConfigError, match=r"broken\.json is not valid JSON \(Expecting ',' delimiter at line 3 "
                                          r"column 3\); a \.json file holds a JSON array of objects"):
        read_prompts_file(tmp_path / "broken.json")
    (tmp_path / "bad.json").write_text('[{"prompt": "a cat"}, "a dog", {"prompt": "a bird", "sed": 1}]')
    with pytest.raises(ConfigError, match=r"line 1: expected a JSON object, got str; line 1: unknown key 'sed'"):
        read_prompts_file(tmp_path / "bad.json")
    (tmp_path / "words.json").write_text("a cat\na dog\n")
    with pytest.raises(ConfigError, match=r"line 1: not valid JSON .*; line 2: not valid JSON"):
        read_prompts_file(tmp_path / "words.json")


def test_a_text_line_that_is_a_json_object_is_a_prompt_as_written_with_a_warning(tmp_path, caplog):
    text = tmp_path / "plain.txt"
    text.write_text('a cat\n{"prompt": "a dog"}\n[1]\n{"prompt": "a bird"}\n')
    with caplog.at_level(logging.WARNING):
        items = read_prompts_file(text)
    assert [item.prompt for item in items] == ["a cat", '{"prompt": "a dog"}', "[1]", '{"prompt": "a bird"}']
    assert f"prompts file {text}: lines 2, 4 are JSON objects, read as a prompt as written" in caplog.text
    assert "name the file .jsonl" in caplog.text
    caplog.clear()
    text.write_text("a cat\n{not json}\n")
    with caplog.at_level(logging.WARNING):
        read_prompts_file(text)
    assert caplog.text == ""


def test_groups_are_t2v_items_of_one_shape_up_to_the_batch_size(tmp_path):
    sizes = [32, 32, 48, 32, 32, 48]
    entries = []
    for line, size in enumerate(sizes, start=1):
        asked = generate.parse_request([*SMALL, "--height", str(size), "--output-path", str(tmp_path / f"{line}.npz")])
        entries.append(batch.BatchEntry(PromptItem(line, {}), asked, generate.plan_run(asked)))
    lines = [[entry.line for entry in group] for group in batch.batch_groups(entries, 2)]
    assert lines == [[1, 2], [3, 6], [4, 5]]
    assert [[entry.line for entry in group] for group in batch.batch_groups(entries, 1)] == [[n] for n in range(1, 7)]


def test_two_items_with_one_output_fail_the_second(tmp_path):
    request = generate.parse_request(["--prompts", str(tmp_path / "p.jsonl"), "--output-format", "npz"])
    items = [PromptItem(1, {"output": "same"}), PromptItem(2, {"output": "same.npz"})]
    entries = [batch.BatchEntry(item, batch.item_request(request, item)) for item in items]
    batch._claim_outputs(entries)
    assert [entry.outcome for entry in entries] == ["pending", "failed"]
    assert "line 1's output too" in entries[1].error
    assert dataclasses.replace(entries[0]).asked.output_path.name == "same.npz"


@pytest.mark.parametrize("name", ["prompts.txt", "prompts.jsonl"])
def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path, name):
    path = tmp_path / name
    first = '{"prompt": "A cat"}' if name.endswith(".jsonl") else "A cat"
    path.write_text(f"\ufeff{first}\n", encoding="utf-8")  # as Windows Notepad saves UTF-8
    assert [item.prompt for item in read_prompts_file(path)] == ["A cat"]


def test_two_outputs_with_one_sidecar_fail_the_second(tmp_path):
    """`x.mp4` and `x.MP4` are two outputs, but both sidecars are `x.json`: the second item fails before it runs."""
    request = generate.parse_request(["--prompts", str(tmp_path / "p.jsonl"), "--output-path", str(tmp_path)])
    items = [PromptItem(1, {"output": "x.mp4"}), PromptItem(2, {"output": "x.MP4"}), PromptItem(3, {"output": "y"})]
    entries = [batch.BatchEntry(item, batch.item_request(request, item)) for item in items]
    batch._claim_outputs(entries)
    assert [entry.outcome for entry in entries] == ["pending", "failed", "pending"]
    assert entries[1].error == (f"its sidecar {tmp_path / 'x.json'} is line 1's sidecar too; give it another 'output'")


def test_items_of_one_line_get_names_of_their_own(tmp_path, capsys):
    """A JSON array on one line: two items of line 1 with one prompt get two default names (line and place), are
    denoised together, and each sidecar names the other's line; a failure names the item by line and place."""
    prompts = tmp_path / "arr.json"
    prompts.write_text('[{"prompt": "a cat", "seed": 1}, {"prompt": "a cat", "seed": 2}, {"prompt": "x", "height": 100}]')
    items = read_prompts_file(prompts)
    assert batch.line_places(items) == [1, 2, 3]
    videos = tmp_path / "videos"
    argv = ["--prompts", str(prompts), "--output-path", str(videos), "--batch-size", "2", *SMALL]
    assert generate.main(argv) == batch.EXIT_ITEMS_FAILED
    assert sorted(path.name for path in videos.iterdir()) == ["0001-1_a-cat.json", "0001-1_a-cat.npz",
                                                             "0001-2_a-cat.json", "0001-2_a-cat.npz"]
    assert "    line 1 item 3: height and width must be positive multiples of 16" in capsys.readouterr().err
    for name, seed in (("0001-1_a-cat.json", 1), ("0001-2_a-cat.json", 2)):
        sidecar = json.loads((videos / name).read_text())
        assert (sidecar["seed"], sidecar["batch"]["line"], sidecar["batch"]["denoised_with"]) == (seed, 1, [1])
    lines = [PromptItem(1, {"prompt": "a"}), PromptItem(3, {"prompt": "a"})]
    assert batch.line_places(lines) == [None, None] and batch.default_name(lines[1]) == "0003_a"
