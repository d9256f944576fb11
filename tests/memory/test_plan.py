"""The planner's decisions at the real model's size for 24, 48 and 80 GiB, and its refusals."""

import dataclasses
import logging

import pytest

from longcat_jax.memory import footprint
from longcat_jax.memory.device import DeviceMemory
from longcat_jax.memory.footprint import DiTCall, dit_activations
from longcat_jax.memory.plan import (
    CHUNK_CHOICES,
    GPU_RESERVE,
    HOURS_WARNING,
    TILE_CHOICES,
    Budget,
    MemoryBudgetError,
    Placement,
    budget_for,
    forced_plan,
    plan_memory,
)
from longcat_jax.memory.sizes import format_size
from longcat_jax.memory.workloads import DiTStage, RunWork, VAEStage, released_pipeline_work
from tests.memory.real_configs import BSA, DISTILL_LORA_BYTES, DIT, real_models

GIB = 2**30
WORK = released_pipeline_work(bsa=BSA)


def gpu_budget(gib: float) -> Budget:
    return Budget(int(gib * GIB), f"--max-device-memory {gib}GiB", "gpu", explicit=True)


def test_80_gib_keeps_everything_on_the_device_at_full_speed():
    plan = plan_memory(WORK, real_models(), gpu_budget(80))
    assert plan.placement == Placement(text_on_cpu=False, dit_streamed=False, chunk_tokens=None, vae_tile=None)
    assert plan.streamed_bytes_per_step == 0
    assert plan.peak <= plan.budget.usable


def test_48_gib_streams_the_weights_beside_the_refinement_loras_activations():
    """The refinement LoRA takes 3.3 GiB as loaded: with 25.3 GiB of weights and the 720p step's activations even in
    chunks, the weights do not stay resident in 48 GiB; streamed, the activations run all at once."""
    plan = plan_memory(WORK, real_models(), gpu_budget(48))
    assert plan.placement.dit_streamed and not plan.placement.text_on_cpu
    assert plan.placement.chunk_tokens is None
    assert plan.peak <= plan.budget.usable
    for chunk in CHUNK_CHOICES:
        resident = forced_plan(WORK, real_models(), gpu_budget(48), Placement(chunk_tokens=chunk))
        assert resident.peak > plan.budget.usable


def test_52_gib_keeps_the_weights_resident_and_chunks_the_activations():
    plan = plan_memory(WORK, real_models(), gpu_budget(52))
    assert not plan.placement.dit_streamed and not plan.placement.text_on_cpu
    assert plan.placement.chunk_tokens is not None  # all tokens at once does not fit beside 28.6 GiB of weights
    assert plan.peak <= plan.budget.usable
    unchunked = forced_plan(WORK, real_models(), gpu_budget(52), dataclasses.replace(plan.placement, chunk_tokens=None))
    assert unchunked.peak > plan.budget.usable


def test_24_gib_streams_the_weights_and_keeps_the_text_encoder_on_the_device():
    plan = plan_memory(WORK, real_models(), gpu_budget(24))
    assert plan.placement.dit_streamed
    assert not plan.placement.text_on_cpu  # 10.6 GiB of UMT5-XXL fit once the DiT waits for it
    assert plan.peak <= plan.budget.usable
    weights = {s.name: s.weights for s in plan.stages}
    assert weights["refine denoising"] < 2 * GIB  # embedders, two blocks and the VAE, not 25 GiB
    assert plan.streamed_bytes_per_step > 25 * GIB


def test_budgets_in_between_never_pick_a_slower_arrangement_for_more_memory():
    order = [(False, None), (False, 32768), (False, 8192), (True, None), (True, 32768), (True, 8192)]
    previous = len(order)
    for gib in range(24, 81, 4):
        placement = plan_memory(WORK, real_models(), gpu_budget(gib)).placement
        rank = order.index((placement.dit_streamed, placement.chunk_tokens))
        assert rank <= previous, gib
        previous = rank


def test_16_gib_is_refused_naming_the_smallest_budget_and_what_lowers_it():
    with pytest.raises(MemoryBudgetError) as info:
        plan_memory(WORK, real_models(), gpu_budget(16))
    message, smallest = str(info.value), info.value.smallest_budget
    assert "refine denoising" in message and "168,960 tokens" in message
    assert f"The smallest budget that holds it: {format_size(smallest)}" in message
    assert "--spatial-refine-only" in message and "--height" in message
    plan = plan_memory(WORK, real_models(), Budget(smallest, "smallest", "gpu", explicit=True))
    assert plan.peak <= plan.budget.usable
    with pytest.raises(MemoryBudgetError):
        plan_memory(WORK, real_models(), Budget(int(smallest * 0.99), "just below", "gpu", explicit=True))


def test_quantized_weights_stay_resident_where_bf16_ones_stream():
    """A 480p distilled generation (no refinement) in 20 GiB: 25 GiB of bf16 weights stream, 13 GiB of int8 ones
    stay on the device; at 14 GiB both stream."""
    work = RunWork((DiTStage("generation denoising", DiTCall(1, (24, 30, 52), 512, lora=True), 16),),
                   (VAEStage("decode", 93, 480, 832),), prompts=1, text_length=512)
    assert plan_memory(work, real_models(lora_bytes=DISTILL_LORA_BYTES), gpu_budget(20)).placement.dit_streamed
    assert not plan_memory(work, real_models("int8", DISTILL_LORA_BYTES), gpu_budget(20)).placement.dit_streamed
    assert plan_memory(work, real_models("int8", DISTILL_LORA_BYTES), gpu_budget(14)).placement.dit_streamed


def test_an_fp8_refinement_with_its_lora_counts_the_quantized_linears_float32_chunks(monkeypatch):
    """`--quantize fp8 --refine --max-device-memory 24GiB`: the plan's refinement estimate is the quantized count
    (the quantized Linears' float32 results of one chunk of tokens, with the refinement LoRA) and fits; counted as
    the earlier form kept them (both float32 results over all 168,960 tokens), no arrangement holds it in 24 GiB."""
    plan = plan_memory(WORK, real_models("fp8"), gpu_budget(24))
    refine = next(s for s in plan.stages if s.name == "refine denoising")
    call = next(s.call for s in WORK.dit if s.name == "refine denoising")
    assert call.lora and call.tokens == 168960
    counted = {mode: dit_activations(DIT, call, act_bytes=2, chunk_tokens=plan.placement.chunk_tokens,
                                     platform="gpu", quantize=mode) for mode in ("fp8", None)}
    assert refine.activations == counted["fp8"] != counted[None]
    assert plan.peak <= plan.budget.usable
    monkeypatch.setattr(footprint, "LORA_CHUNK_ROWS", 10**9)
    with pytest.raises(MemoryBudgetError, match="refine denoising"):
        plan_memory(WORK, real_models("fp8"), gpu_budget(24))


def test_the_text_encoder_moves_to_the_cpu_when_it_cannot_fit():
    work = RunWork((DiTStage("generation denoising", DiTCall(1, (6, 30, 52), 512), 16),), (), prompts=2,
                   text_length=512)
    plan = plan_memory(work, real_models(), gpu_budget(10))
    assert plan.placement.text_on_cpu and plan.placement.dit_streamed
    assert plan.stages[0].name == "text encoding" and plan.stages[0].activations == 0


@pytest.mark.parametrize("gib", [12, 16, 20])
def test_the_vae_tile_is_the_largest_that_fits(gib):
    work = RunWork((), (VAEStage("decode", 93, 1408, 2560),), prompts=0, text_length=512)
    plan = plan_memory(work, real_models(), gpu_budget(gib))
    tile = plan.placement.vae_tile
    assert tile is not None and plan.peak <= plan.budget.usable
    larger = TILE_CHOICES[TILE_CHOICES.index(tile) - 1]  # whole frames before 512
    refused = forced_plan(work, real_models(), gpu_budget(gib), dataclasses.replace(plan.placement, vae_tile=larger))
    assert refused.peak > plan.budget.usable


def test_several_devices_keep_the_dit_whole_and_divide_its_activations():
    one = plan_memory(WORK, real_models(), gpu_budget(80))
    four = plan_memory(WORK, real_models(), gpu_budget(80), devices=4)
    assert not four.placement.dit_streamed and four.placement.chunk_tokens is None
    assert four.peak < one.peak
    with pytest.raises(MemoryBudgetError, match="per device of 4"):
        plan_memory(WORK, real_models(), gpu_budget(24), devices=4)


def test_the_gpu_reserve_and_headroom_stay_unplanned():
    budget = gpu_budget(24)
    assert budget.usable == int(24 * GIB * 0.95) - GPU_RESERVE
    assert budget.needed_for(budget.usable) >= 24 * GIB - 1


def test_a_run_of_hours_is_warned_about(caplog):
    long_run = dataclasses.replace(WORK, dit=tuple(dataclasses.replace(s, repeats=40) for s in WORK.dit))
    plan = plan_memory(long_run, real_models(), gpu_budget(80))
    assert plan.seconds > HOURS_WARNING
    with caplog.at_level(logging.INFO, logger="longcat_jax.memory.plan"):
        plan.log()
    assert any("hours" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert any("Memory plan: budget 80.00 GiB" in r.message for r in caplog.records)
    short = plan_memory(WORK, real_models(), gpu_budget(80))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="longcat_jax.memory.plan"):
        short.log()
    assert not any(r.levelno == logging.WARNING for r in caplog.records)


def test_the_plan_prints_every_stage_with_its_estimate():
    lines = plan_memory(WORK, real_models(), gpu_budget(24)).lines()
    text = "\n".join(lines)
    for stage in ("text encoding", "generation denoising", "refine denoising", "decode", "refine encode"):
        assert stage in text
    assert "streamed block by block from pinned host memory" in text
    assert "DiT bytes streamed per denoising step" in text


@pytest.mark.parametrize("devices, divided", [(4, True), (3, False), (7, False)])
def test_a_vae_pass_the_devices_do_not_split_is_counted_whole_on_each(devices, divided):
    """The 720p refinement's decode: latents 88 x 160, which 4 devices split along W and 3 or 7 split along neither
    side (`split_spatially` then runs the VAE unsplit on every device)."""
    work = RunWork((), (VAEStage("decode", 93, 704, 1280),), prompts=0, text_length=512)
    one = plan_memory(work, real_models(), gpu_budget(80)).stages[0]
    several = plan_memory(work, real_models(), gpu_budget(80), devices=devices).stages[0]
    assert several.activations == (one.activations // devices if divided else one.activations)


def test_a_budget_above_the_device_plans_the_device_and_a_refusal_names_a_larger_device():
    device = DeviceMemory(24 * GIB, "gpu", "a 24 GiB test GPU")
    budget = budget_for("1TiB", device)
    assert budget.bytes == 24 * GIB and "below --max-device-memory 1TiB" in budget.source and not budget.explicit
    with pytest.raises(MemoryBudgetError, match=r"this device's 24.00 GiB .*\(a device with that much memory\)"):
        plan_memory(RunWork((DiTStage("generation denoising", DiTCall(1, (96, 176, 320), 512), 50),), (),
                            prompts=1, text_length=512), real_models(), budget)
