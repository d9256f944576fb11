"""Parity group `dit`: the flax DiT against the original's forward on the fixture's tiny model.

The model is loaded from the fixture folder's `dit/` and LoRA file exactly as a user's checkpoint
would be. `dit_cases.json` lists the cases (t2v, i2v, kvcache, lora, bsa) with a `call` text saying
how the original was called; the values that are not in the tensors (num_cond_latents, the LoRA
file and multiplier, bsa_params, batch, text item and timestep of the bsa case) are read from that
text, every shape from the tensors and from `dit/config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from kernels import BSAParams
from longcat_jax.checkpoint.safetensors import SafetensorsCheckpoint
from longcat_jax.errors import LongCatError
from longcat_jax.metrics import rel_l2
from longcat_jax.models.dit import LongCatDiT, enable_loras, load_dit, load_lora, merge_loras
from longcat_jax.parity.report import CaseResult, verdict

TOLERANCES = {"float32": 1e-4, "bfloat16": 2e-2}
_FLAGS = ("num_cond_latents", "return_kv", "skip_crs_attn")
_forward = nnx.jit(lambda model, *args, **kwargs: model(*args, **kwargs), static_argnames=_FLAGS)
# The same forward, also returning what the modules sowed as `nnx.Intermediate` (the BSA selections).
_forward_capturing = nnx.jit(nnx.capture(lambda model, *args, **kwargs: model(*args, **kwargs), nnx.Intermediate),
                             static_argnames=_FLAGS)


class FixtureFormatError(LongCatError):
    """The fixture folder lacks a tensor or a value a case needs."""


@dataclasses.dataclass
class _Context:
    fixtures: Path
    dtype: str
    tensors: SafetensorsCheckpoint
    model: LongCatDiT

    def tensor(self, name: str) -> jnp.ndarray:
        if name not in self.tensors:
            raise FixtureFormatError(f"dit_cases.safetensors has no tensor {name!r}")
        return jnp.asarray(self.tensors.read(name))

    def case_input(self, case: str, name: str) -> jnp.ndarray:
        """`<case>.<name>` if the fixture stores it, else the t2v input of that name."""
        return self.tensor(f"{case}.{name}" if f"{case}.{name}" in self.tensors else f"t2v.{name}")

    def text(self, case: str) -> tuple[jnp.ndarray, jnp.ndarray]:
        return self.case_input(case, "encoder_hidden_states"), self.case_input(case, "encoder_attention_mask")


def _value(call: str, pattern: str, what: str, default=None) -> str:
    match = re.search(pattern, call)
    if match is None:
        if default is not None:
            return default
        raise FixtureFormatError(f"cannot read {what} from the case's call text {call!r}")
    return match.group(1)


def parse_bsa_params(call: str) -> BSAParams:
    """bsa_params from text like `bsa_params {sparsity: 0.75, cdf_threshold: null, chunk_3d_shape_q/k: [4,4,4]}`."""
    body = _value(call, r"bsa_params\s*\{([^}]*)\}", "bsa_params")
    params: dict = {}
    for key, raw in re.findall(r"\"?([A-Za-z_0-9/]+)\"?\s*:\s*(\[[^\]]*\]|[^,]+)", body):
        raw = raw.strip()
        value = None if raw in ("null", "None") else json.loads(raw) if raw.startswith("[") else float(raw)
        if key.endswith("_q/k"):
            stem = key[: -len("_q/k")]
            params[f"{stem}_q"] = params[f"{stem}_k"] = value
        else:
            params[key] = value
    return BSAParams.from_dict(params)


def _t2v(ctx: _Context, call: str) -> tuple[float, str]:
    text, mask = ctx.text("t2v")
    out = _forward(ctx.model, ctx.tensor("t2v.hidden_states"), ctx.tensor("t2v.timestep"), text, mask)
    return rel_l2(out, ctx.tensor("t2v.out")), ""


def _i2v(ctx: _Context, call: str) -> tuple[float, str]:
    num_cond = int(_value(call, r"num_cond_latents\s*=\s*(\d+)", "num_cond_latents"))
    text, mask = ctx.text("i2v")
    out = _forward(ctx.model, ctx.case_input("i2v", "hidden_states"), ctx.tensor("i2v.timestep"), text, mask,
                   num_cond_latents=num_cond)
    return rel_l2(out, ctx.tensor("i2v.out")), f"num_cond_latents={num_cond}"


def _kvcache(ctx: _Context, call: str) -> tuple[float, str]:
    cond = ctx.tensor("kvcache.cond_latents")
    num_cond = int(_value(call, r"num_cond_latents\s*=\s*(\d+)", "num_cond_latents", str(cond.shape[2])))
    text, mask = ctx.text("kvcache")
    _, cache = _forward(ctx.model, cond, jnp.zeros(cond.shape[:1] + cond.shape[2:3]), jnp.zeros_like(text), mask,
                        return_kv=True, skip_crs_attn=True)
    out = _forward(ctx.model, ctx.tensor("kvcache.hidden_states"), ctx.tensor("kvcache.timestep"), text, mask,
                   num_cond_latents=num_cond, kv_cache=cache)
    # The fixture stores block 0's cache as [B, H, S, D]; ours is [B, S, H, D].
    errors = {
        "out": rel_l2(out, ctx.tensor("kvcache.out")),
        "block0.k": rel_l2(cache[0][0].transpose(0, 2, 1, 3), ctx.tensor("kvcache.block0.k")),
        "block0.v": rel_l2(cache[1][0].transpose(0, 2, 1, 3), ctx.tensor("kvcache.block0.v")),
    }
    return max(errors.values()), ", ".join(f"{k}={v:.1e}" for k, v in errors.items())


def _lora(ctx: _Context, call: str) -> tuple[float, str]:
    file = _value(call, r"([\w./-]+\.safetensors)", "the LoRA file")
    multiplier = float(_value(call, r"multiplier\s*[=:]?\s*([0-9.]+)", "multiplier", "1.0"))
    lora = load_lora(ctx.fixtures / file, multiplier=multiplier)
    text, mask = ctx.text("lora")
    args = (ctx.case_input("lora", "hidden_states"), ctx.case_input("lora", "timestep"), text, mask)
    want = ctx.tensor("lora.out")
    run_time = nnx.clone(ctx.model)
    enable_loras(run_time, [lora])
    merged = nnx.clone(ctx.model)
    merge_loras(merged, [lora])
    errors = {"run-time": rel_l2(_forward(run_time, *args), want), "merged": rel_l2(_forward(merged, *args), want)}
    return max(errors.values()), ", ".join(f"{k}={v:.1e}" for k, v in errors.items())


def _selections(model: LongCatDiT, args) -> list[np.ndarray]:
    """The selected-block masks [B, H, Mq, Mk] of every block-sparse call, in call order."""
    model.record_bsa_selection(True)
    try:
        _, sown = _forward_capturing(model, *args)
    finally:
        model.record_bsa_selection(False)
    masks = []
    for index in range(len(model.blocks)):
        masks.extend(np.asarray(m) for m in sown["blocks"][index]["attn"]["bsa_selection"].get_value())
    return masks


def _bsa(ctx: _Context, call: str) -> tuple[float, str]:
    params = parse_bsa_params(call)
    hidden = ctx.tensor("bsa.hidden_states")
    batch = hidden.shape[0]
    item = int(_value(call, r"item\s+(\d+)", "the text item", "0"))
    text, mask = ctx.text("bsa")
    text, mask = text[item: item + batch], mask[item: item + batch]
    if "bsa.timestep" in ctx.tensors:
        timestep = ctx.tensor("bsa.timestep")
    else:
        values = [float(v) for v in _value(call, r"timestep\s*\[([^\]]+)\]", "the timestep").split(",")]
        timestep = jnp.broadcast_to(jnp.asarray(values, jnp.float32), (batch,))
    args = (hidden, timestep, text, mask)
    model = nnx.clone(ctx.model)
    model.set_bsa(params)
    error = rel_l2(_forward(model, *args), ctx.tensor("bsa.out"))
    note = f"sparsity={params.sparsity}, cdf={params.cdf_threshold}"
    if ctx.dtype != "float32":
        reference = load_dit(ctx.fixtures / "dit", dtype=jnp.float32)
        reference.set_bsa(params)
        ours, theirs = _selections(model, args), _selections(reference, args)
        differ = sum(int((a != b).sum()) for a, b in zip(ours, theirs))
        entries = sum(a.size for a in ours)
        if differ == 0:
            note += "; block selection identical to float32"
        elif verdict(error, TOLERANCES[ctx.dtype]) == "FAIL":
            note += (f"; bf16 block selection differs from float32 in {differ} of {entries} mask entries "
                     "(near-tied block scores): a different block was chosen, which explains the miss")
        else:
            note += f"; bf16 block selection differs from float32 in {differ} of {entries} mask entries"
    return error, note


RUNNERS: dict[str, Callable[[_Context, str], tuple[float, str]]] = {
    "t2v": _t2v, "i2v": _i2v, "kvcache": _kvcache, "lora": _lora, "bsa": _bsa,
}


def run(fixtures: Path, dtype: str) -> list[CaseResult]:
    """One result per case of `dit_cases.json`; a missing file, tensor or value is a FAIL naming it."""
    fixtures = Path(fixtures)
    tol = TOLERANCES[dtype]
    for needed in (fixtures / "dit_cases.json", fixtures / "dit_cases.safetensors", fixtures / "dit"):
        if not needed.exists():
            return [CaseResult("*", float("nan"), tol, "FAIL", note=f"{needed} not found")]
    spec = json.loads((fixtures / "dit_cases.json").read_text())
    ctx = _Context(fixtures, dtype, SafetensorsCheckpoint(fixtures / "dit_cases.safetensors"),
                   load_dit(fixtures / "dit", dtype=jnp.dtype(dtype)))
    results = []
    for case in spec["cases"]:
        name = case["name"]
        runner = RUNNERS.get(name)
        if runner is None:
            results.append(CaseResult(name, float("nan"), tol, "FAIL", note="no runner for this case"))
            continue
        try:
            error, note = runner(ctx, case.get("call", ""))
        except LongCatError as e:
            results.append(CaseResult(name, float("nan"), tol, "FAIL", note=f"{type(e).__name__}: {e}"))
            continue
        results.append(CaseResult(name, error, tol, verdict(error, tol), note=note))
    return results
