"""`python -m longcat_jax.generate --prompts FILE`: every item of a prompts file, with the models loaded once.

1. The file is read whole (`longcat_jax.prompts_file`) and refused, before anything loads, when a line is bad.
2. Each item becomes a request: the command line's flags with the item's values. Its output is the item's `output`
   (relative: inside the output folder), else `NNNN_<prompt words>.<format>` (NNNN its line; `NNNN-K_...` for the
   K-th item of a line that holds several, as a JSON array written on one line does) in the output folder:
   `--output-path`, else `outputs/<file name>/`. Relative `image` and `video` paths are read from the file's folder.
   An item whose output or sidecar is an earlier item's fails (it would overwrite it, or be skipped as done).
3. An item whose output exists is skipped, so an interrupted batch resumes where it stopped.
4. Every other item is planned (the CLI's checks, the checkpoint read once); one that fails them is reported and
   skipped. A mistake every item shares (checkpoint, LoRA file, BSA config, device count) refuses the whole file.
5. The models load once, placed by the memory plan of the item that needs the most memory; every prompt is encoded
   and the text encoder freed for the DiT.
6. The items run in file order, t2v items of one shape (`pipelines.t2v_batch.batch_key`) up to `--batch-size` at a
   time through the DiT; each video is written with its provenance sidecar. An item that fails while running is
   reported and skipped; the rest go on.
7. The summary counts written, skipped and failed items, naming each failure by line (and place on the line when
   the line holds several items); the exit status is `EXIT_ITEMS_FAILED` when any item failed. One bar counts the
   file's items, and each video has its own bars.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
from tqdm.auto import tqdm

from longcat_jax.errors import InputError, LongCatError
from longcat_jax.output_path import FILE_SUFFIXES
from longcat_jax.pipelines.options import GeneratedVideo
from longcat_jax.pipelines.pipeline import LongCatPipeline
from longcat_jax.pipelines.request import RunRequest
from longcat_jax.pipelines.stats import RunStats, peak_memory_line
from longcat_jax.pipelines.t2v_batch import batch_key, run_t2v_tasks
from longcat_jax.pipelines.tasks import (
    RunPlan,
    check_shared_settings,
    encode_prompts,
    load_pipeline,
    plan_context,
    plan_run,
)
from longcat_jax.prompts_file import PromptItem, read_prompts_file
from longcat_jax.provenance import BatchItem, sidecar_path, write_video_and_sidecar
from longcat_jax.signals import describe, exit_status

logger = logging.getLogger(__name__)

EXIT_ITEMS_FAILED = 1  # some items failed, the others were written (2: the command or the file was refused)
SLUG_WORDS = 6  # words of the prompt in a default output name
SLUG_CHARS = 48
MEMORY_PLAN_LOGGER = "longcat_jax.memory.plan"  # logs each item's plan; the batch logs the one it loads with


@dataclasses.dataclass
class BatchEntry:
    """One item of the file and what became of it: `asked` is its request as given (the sidecar records it), `plan`
    its checked plan; outcome pending, written, skipped or failed (with `error`). `place` is the item's place
    (1, 2, ...) among the items of its line when that line holds several (`line_places`), else None."""

    item: PromptItem
    asked: RunRequest
    plan: RunPlan | None = None
    outcome: str = "pending"
    error: str | None = None
    place: int | None = None

    @property
    def line(self) -> int:
        return self.item.line

    @property
    def name(self) -> str:
        """How messages name the item: `line 3`, or `line 3 item 2` on a line of several items."""
        return f"line {self.line}" if self.place is None else f"line {self.line} item {self.place}"


def run_batch(request: RunRequest, command: Sequence[str]) -> int:
    """Runs every item of `request.prompts` (see the module docstring); returns the exit status. Errors shared by
    every item raise (the CLI's status 2); Ctrl-C or SIGTERM stops after a summary of what was written."""
    check_batch_request(request)
    items = read_prompts_file(request.prompts)
    entries = [BatchEntry(item, item_request(request, item, place), place=place)
               for item, place in zip(items, line_places(items))]
    _claim_outputs(entries)
    for entry in entries:
        if entry.outcome == "pending" and entry.asked.output_path.exists():
            entry.outcome = "skipped"
            logger.info("%s: %s exists, skipped (delete it to make it again)", entry.name, entry.asked.output_path)
    start = time.perf_counter()
    shared = RunStats()
    with tqdm(total=len(entries), desc=f"Prompts ({request.prompts.name})", unit="video") as bar:
        bar.update(sum(entry.outcome != "pending" for entry in entries))
        try:
            pending = [entry for entry in entries if entry.outcome == "pending"]
            _plan_entries(pending)
            bar.update(sum(entry.outcome == "failed" for entry in pending))
            runnable = [entry for entry in pending if entry.outcome == "pending"]
            if runnable:
                _run_entries(runnable, request, shared, command, bar)
        except KeyboardInterrupt as stop:
            print(batch_summary(request.prompts, entries, shared, time.perf_counter() - start), file=sys.stderr)
            logger.error("%s; the videos written so far stay: run the same command again to go on", describe(stop))
            return exit_status(stop)
    print(batch_summary(request.prompts, entries, shared, time.perf_counter() - start), file=sys.stderr)
    return EXIT_ITEMS_FAILED if any(entry.outcome == "failed" for entry in entries) else 0


def check_batch_request(request: RunRequest) -> None:
    """Refuses what a batch cannot take, before the file is read."""
    if request.prompt is not None:
        raise InputError("--prompt and --prompts FILE are two ways to give prompts; give one (a JSONL line's "
                         "'prompt' sets one item's)")
    if request.batch_size < 1:
        raise InputError(f"--batch-size must be 1 or more, got {request.batch_size}")
    if request.batch_size > 1 and request.max_device_memory is not None:
        raise InputError("--max-device-memory plans one video at a time, and --batch-size denoises several at once; "
                         "leave one of them out")
    if jax.process_count() > 1:
        raise InputError("--prompts runs on one host; with several hosts, run one prompt per command")
    folder = output_folder(request)
    if folder.suffix.lower() in FILE_SUFFIXES.values() or folder.is_file():
        raise InputError(f"with --prompts, --output-path is the folder the videos go into, and {folder} names a file; "
                         "give a folder (a JSONL line's 'output' names one item's file)")


def output_folder(request: RunRequest) -> Path:
    """--output-path, else outputs/<the prompts file's name without suffix>."""
    return request.output_path if request.output_path is not None else Path("outputs") / request.prompts.stem


def line_places(items: Sequence[PromptItem]) -> list[int | None]:
    """Each item's place (1, 2, ...) among the items of its line, in file order, where the line holds several (a
    JSON array written on one line); None where the item is alone on its line."""
    per_line = Counter(item.line for item in items)
    seen: Counter[int] = Counter()
    places: list[int | None] = []
    for item in items:
        seen[item.line] += 1
        places.append(seen[item.line] if per_line[item.line] > 1 else None)
    return places


def item_request(request: RunRequest, item: PromptItem, place: int | None = None) -> RunRequest:
    """The request of one item (`place`: see `line_places`): the command line's, with the item's values (see the
    module docstring)."""
    values = dict(item.values)
    here = request.prompts.parent
    for key in ("image", "video"):
        if key in values:
            values[key] = here / values[key]  # an absolute path stays as it is
    folder = output_folder(request)
    output = folder / values.pop("output") if "output" in values else folder / default_name(item, place)
    if request.output_format != "frames" and not output.suffix:
        output = output.with_name(output.name + FILE_SUFFIXES[request.output_format])
    return dataclasses.replace(request, **values, output_path=output, prompts=None, batch_size=1, from_json=None)


def default_name(item: PromptItem, place: int | None = None) -> str:
    """`NNNN_<the prompt's first words>`: NNNN the item's line, `NNNN-K` for the K-th item of a line of several
    (`line_places`), so that two items of one line with one prompt still get two names."""
    words = re.findall(r"[a-z0-9]+", (item.prompt or "").lower())[:SLUG_WORDS]
    slug = "-".join(words)[:SLUG_CHARS].strip("-") or "default-prompt"
    return f"{item.line:04d}" + ("" if place is None else f"-{place}") + f"_{slug}"


def _claim_outputs(entries: Sequence[BatchEntry]) -> None:
    """Fails an item whose output or sidecar is an earlier item's output or sidecar (it would overwrite it, or be
    skipped as done): `x.MP4` and `x.mp4` are two outputs but one sidecar `x.json`."""
    owners: dict[Path, tuple[str, str]] = {}  # path -> (the item claiming it, "output" or "sidecar")
    for entry in entries:
        output = entry.asked.output_path
        claims = {"output": output, "sidecar": sidecar_path(output, entry.asked.output_format)}
        taken = [(kind, path) for kind, path in claims.items() if path.resolve() in owners]
        if taken:
            kind, path = taken[0]
            owner, owner_kind = owners[path.resolve()]
            _fail(entry, f"its {kind} {path} is {owner}'s {owner_kind} too; give it another 'output'")
            continue
        owners.update({path.resolve(): (entry.name, kind) for kind, path in claims.items()})


def _plan_entries(entries: Sequence[BatchEntry]) -> None:
    """Plans each entry (the checkpoint read once); an entry that fails its checks is failed and reported."""
    if not entries:
        return
    check_shared_settings(entries[0].asked)  # a mistake every item shares raises: the whole file is refused
    resolved, context = plan_context(entries[0].asked)
    with _quiet(MEMORY_PLAN_LOGGER):
        for entry in entries:
            try:
                entry.plan = plan_run(dataclasses.replace(entry.asked, model_path=resolved.model_path), context=context)
            except LongCatError as err:
                _fail(entry, str(err))


def _run_entries(entries: Sequence[BatchEntry], request: RunRequest, shared: RunStats, command: Sequence[str],
                 bar: tqdm) -> None:
    """Loads the models once, encodes every prompt, then runs the entries group by group."""
    loading = max(entries, key=lambda entry: entry.plan.memory.peak if entry.plan.memory is not None else 0).plan
    if loading.memory is not None:
        loading.memory.log()
    pipe = load_pipeline(loading, shared)
    encode_prompts(pipe, [entry.plan for entry in entries])
    for group in batch_groups(entries, request.batch_size):
        _run_group(pipe, group, request, command)
        bar.update(len(group))


def batch_groups(entries: Sequence[BatchEntry], batch_size: int) -> list[list[BatchEntry]]:
    """The entries in groups that run together: t2v entries of one `batch_key`, up to `batch_size` each, the others
    alone; in the order of each group's first entry."""
    by_key: dict[object, list[BatchEntry]] = {}
    for index, entry in enumerate(entries):
        plan = entry.plan
        key = ("t2v", batch_key(plan.stages.generation)) if plan.task.name == "t2v" and batch_size > 1 else index
        by_key.setdefault(key, []).append(entry)
    groups = [members[start : start + batch_size] for members in by_key.values()
              for start in range(0, len(members), batch_size)]
    return sorted(groups, key=lambda group: entries.index(group[0]))


def _run_group(pipe: LongCatPipeline, group: Sequence[BatchEntry], request: RunRequest, command: Sequence[str]) -> None:
    """Runs one group and writes its videos; a failure fails the entries it concerns, and the batch goes on."""
    for entry in group:
        logger.info("%s: %r -> %s", entry.name, entry.plan.setup.prompt, entry.plan.output_path)
    stats = RunStats()
    pipe.stats = stats
    with _failing(group):
        videos = _generate(pipe, group)
    if any(entry.outcome == "failed" for entry in group):
        return
    for entry, video in zip(group, videos):
        with _failing([entry]):
            fps = entry.plan.setup.request.fps or video.fps
            batch = BatchItem(request.prompts, entry.line, tuple(other.line for other in group if other is not entry))
            path = write_video_and_sidecar(entry.plan, entry.asked, video.frames, fps, video.stats or stats, command=command,
                                           batch=batch)
            entry.outcome = "written"
            logger.info("%s: wrote %s", entry.name, path)


@contextlib.contextmanager
def _failing(entries: Sequence[BatchEntry]) -> Iterator[None]:
    """Fails `entries` when the block raises: a LongCatError by its message; any other error too, logged with its
    traceback (a batch goes on past one item's failure: device memory, a bug). Ctrl-C and SIGTERM pass."""
    try:
        yield
    except LongCatError as err:
        for entry in entries:
            _fail(entry, str(err))
    except Exception as err:
        logger.exception("%s failed", ", ".join(entry.name for entry in entries))
        for entry in entries:
            _fail(entry, f"{type(err).__name__}: {err}")


def _generate(pipe: LongCatPipeline, group: Sequence[BatchEntry]) -> list[GeneratedVideo]:
    if len(group) == 1:
        plan = group[0].plan
        return [plan.task.run(pipe, plan.setup, plan.stages)]
    return run_t2v_tasks(pipe, [entry.plan.setup for entry in group], [entry.plan.stages for entry in group])


def _fail(entry: BatchEntry, error: str) -> None:
    entry.outcome, entry.error = "failed", error
    logger.error("%s failed, skipped: %s", entry.name, error)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """INFO lines of the logger `name` left out inside the block (its warnings stay)."""
    named = logging.getLogger(name)
    level = named.level
    named.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        named.setLevel(level)


def batch_summary(prompts: Path, entries: Sequence[BatchEntry], shared: RunStats, seconds: float) -> str:
    """The end of a batch: how many items were written, skipped and failed (each failure by `BatchEntry.name`),
    the shared stages' time, the time per written video and peak memory."""
    counts = {outcome: sum(entry.outcome == outcome for entry in entries)
              for outcome in ("written", "skipped", "failed", "pending")}
    lines = [f"Batch summary: {prompts} ({len(entries)} items)",
             f"  {'written':<28}{counts['written']:>8}",
             f"  {'skipped (output exists)':<28}{counts['skipped']:>8}",
             f"  {'failed':<28}{counts['failed']:>8}"]
    lines += [f"    {entry.name}: {entry.error}" for entry in entries if entry.outcome == "failed"]
    if counts["pending"]:
        lines.append(f"  {'not run (interrupted)':<28}{counts['pending']:>8}")
    seconds_by_stage: dict[str, float] = {}
    for stage in shared.stages:  # "text encoding #2" (another call) counts as "text encoding"
        name = re.sub(r" #\d+$", "", stage.name)
        seconds_by_stage[name] = seconds_by_stage.get(name, 0.0) + stage.seconds
    lines += [f"  {name:<28}{total:>8.2f} s" for name, total in seconds_by_stage.items()]
    per_video = f" ({seconds / counts['written']:.2f} s per written video)" if counts["written"] else ""
    lines.append(f"  {'total':<28}{seconds:>8.2f} s{per_video}")
    lines.append(f"  {peak_memory_line()}")
    return "\n".join(lines)
