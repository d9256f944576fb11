"""Time and memory of encoding one LongCat prompt pair (prompt + negative) with the UMT5 text encoder.

The real size is UMT5-XXL (d_model 4096, 24 layers, 64 heads of 64, d_ff 10240, vocabulary 256,384,
5.7B parameters) with random weights made on the device, bfloat16, a batch of 2 sequences of 512
tokens (the original pads every prompt to 512) with realistic masks. Reported per configuration:

- compile: seconds of the first call (tracing + XLA compilation + one run);
- encode: median milliseconds of `run_encoder` (what `encode_prompt` calls) after warm-up, and the
  matmul throughput that implies (projections + attention, padded tokens included, as computed);
- weights / XLA temp: parameter bytes, and the scratch the compiled encoder needs beyond its inputs
  and outputs (from XLA's memory analysis);
- device peak: the device's peak bytes in use over the whole run (weights creation included), and
  how much `release_text_encoder` gave back (both where the backend reports memory, e.g. GPUs).

    python benchmarks/text_encoder.py             # UMT5-XXL, bfloat16 (on a GPU)
    python benchmarks/text_encoder.py --small     # tiny config, a CPU smoke test of this script

It prints a table and writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longcat_jax.models.text_encoder.config import UMT5Config  # noqa: E402
from longcat_jax.models.text_encoder.prompt import release_text_encoder  # noqa: E402
from longcat_jax.models.text_encoder.umt5 import UMT5Encoder, run_encoder  # noqa: E402

XXL = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
SMALL = UMT5Config(vocab_size=384, d_model=64, d_kv=16, d_ff=160, num_layers=2, num_heads=4)
GIB = 2**30


def random_encoder_on_device(config: UMT5Config, dtype) -> UMT5Encoder:
    """Random weights drawn by one compiled program on the default device (no host round trip)."""

    def make() -> UMT5Encoder:
        return UMT5Encoder(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype)

    graphdef, _ = nnx.split(nnx.eval_shape(make))
    state = jax.jit(lambda: nnx.state(make()))()
    return nnx.merge(graphdef, state)


def prompt_pair(config: UMT5Config, length: int, prompt_tokens: int, negative_tokens: int):
    """Token ids [2, length] and masks: a prompt and a negative prompt of the given token counts."""
    rng = np.random.default_rng(0)
    ids = np.zeros((2, length), np.int32)
    mask = np.zeros((2, length), np.int32)
    for row, count in enumerate((prompt_tokens, negative_tokens)):
        ids[row, : count - 1] = rng.integers(3, config.vocab_size, size=count - 1)
        ids[row, count - 1] = config.eos_token_id
        mask[row, :count] = 1
    return jnp.asarray(ids), jnp.asarray(mask)


def matmul_flops(config: UMT5Config, batch: int, length: int) -> float:
    """FLOPs of the projections and of q k^T and weights v, over all (padded) positions."""
    tokens = batch * length
    per_layer = 2 * tokens * (4 * config.d_model * config.inner_dim + 3 * config.d_model * config.d_ff)
    per_layer += 4 * batch * config.num_heads * length * length * config.d_kv
    return per_layer * config.num_layers


def device_bytes(key: str) -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats or key not in stats else int(stats[key])


def bench(config: UMT5Config, dtype, length: int, prompt_tokens: int, negative_tokens: int, trials: int) -> dict:
    encoder = random_encoder_on_device(config, dtype)
    ids, mask = prompt_pair(config, length, prompt_tokens, negative_tokens)
    graphdef, state = nnx.split(encoder)
    weights = sum(x.nbytes for x in jax.tree.leaves(state))
    same_program = jax.jit(lambda params, i, m: nnx.merge(graphdef, params)(i, m))
    memory = same_program.lower(state, ids, mask).compile().memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    del state, same_program

    start = time.perf_counter()
    jax.block_until_ready(run_encoder(encoder, ids, mask))
    compile_s = time.perf_counter() - start
    for _ in range(2):
        jax.block_until_ready(run_encoder(encoder, ids, mask))
    samples = []
    for _ in range(trials):
        start = time.perf_counter()
        jax.block_until_ready(run_encoder(encoder, ids, mask))
        samples.append(time.perf_counter() - start)
    encode_s = statistics.median(samples)

    peak = device_bytes("peak_bytes_in_use")
    before = device_bytes("bytes_in_use")
    release_text_encoder(encoder)
    after = device_bytes("bytes_in_use")
    return {
        "weights_gib": weights / GIB,
        "compile_s": compile_s,
        "encode_ms": encode_s * 1e3,
        "tflops": matmul_flops(config, 2, length) / encode_s / 1e12,
        "temp_mib": None if temp is None else temp / 2**20,
        "peak_gib": None if peak is None else peak / GIB,
        "freed_gib": None if before is None or after is None else (before - after) / GIB,
    }


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny config (CPU smoke test) instead of UMT5-XXL")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--length", type=int, default=512, help="padded sequence length (original: 512)")
    parser.add_argument("--prompt-tokens", type=int, default=120, help="real tokens of the prompt (eos included)")
    parser.add_argument("--negative-tokens", type=int, default=40, help="real tokens of the negative prompt")
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    if not 1 <= args.negative_tokens <= args.length or not 1 <= args.prompt_tokens <= args.length:
        parser.error("token counts must be between 1 and --length")

    config, name = (SMALL, "tiny (d_model 64, 2 layers)") if args.small else (XXL, "UMT5-XXL (5.7B)")
    result = bench(config, jnp.dtype(args.dtype), args.length, args.prompt_tokens, args.negative_tokens, args.trials)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}")
    header = (
        "| model | dtype | batch x tokens | weights GiB | compile s | encode ms | TFLOP/s "
        "| XLA temp MiB | device peak GiB | freed GiB |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    print(
        f"| {name} | {args.dtype} | 2 x {args.length} ({args.prompt_tokens} + {args.negative_tokens} real) "
        f"| {result['weights_gib']:.3g} | {result['compile_s']:.2f} | {result['encode_ms']:.2f} "
        f"| {result['tflops']:.3g} | {_fmt(result['temp_mib'], '.1f')} | {_fmt(result['peak_gib'], '.3g')} "
        f"| {_fmt(result['freed_gib'], '.3g')} |"
    )


if __name__ == "__main__":
    main()
