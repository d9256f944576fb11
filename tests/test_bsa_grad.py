"""Gradients of the Pallas BSA kernels (custom_vjp) against jax.grad of the jnp reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import KernelConfig, TritonConfig, sparse_attention_chunked


def _problem(key, *, b, h, d, block_q, block_k, mq, mk, dtype):
    keys = jax.random.split(key, 4)
    q = jax.random.normal(keys[0], (b, mq * block_q, h, d), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (b, mk * block_k, h, d), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (b, mk * block_k, h, d), jnp.float32).astype(dtype)
    do = jax.random.normal(keys[3], q.shape, jnp.float32).astype(dtype)
    return q, k, v, do


def _grads(backend, q, k, v, do, indices, counts, block_q, block_k, config=None):
    def loss(q, k, v):
        out = sparse_attention_chunked(
            q, k, v, indices, counts, block_q, block_k, backend=backend, kernel_config=config
        )
        return jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _rel_l2(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def _random_selection(key, b, h, mq, mk, width):
    """Random ascending key-block lists of uneven lengths (0 to width); query block 0 of head 0 is empty."""
    order_key, count_key = jax.random.split(key)
    order = jnp.argsort(jax.random.uniform(order_key, (b, h, mq, mk)), axis=-1)[..., :width]
    counts = jax.random.randint(count_key, (b, h, mq), 1, width + 1).at[:, 0, 0].set(0)
    valid = jnp.arange(width) < counts[..., None]
    return jnp.sort(jnp.where(valid, order, mk), axis=-1).astype(jnp.int32), counts.astype(jnp.int32)


def _check(backend, dtype, tol, *, b, h, d, block_q, block_k, mq, mk, config=None):
    q, k, v, do = _problem(jax.random.key(7), b=b, h=h, d=d, block_q=block_q, block_k=block_k, mq=mq, mk=mk,
                           dtype=dtype)
    indices, counts = _random_selection(jax.random.key(8), b, h, mq, mk, width=mk // 2 + 1)
    grads = _grads(backend, q, k, v, do, indices, counts, block_q, block_k, config)
    expected = _grads("reference", q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), do,
                      indices, counts, block_q, block_k)
    for name, got, want, x in zip(("dq", "dk", "dv"), grads, expected, (q, k, v)):
        chex.assert_equal_shape((got, x))
        chex.assert_type(got, dtype)
        assert np.all(np.isfinite(np.asarray(got, np.float32))), name
        assert _rel_l2(got, want) < tol, (name, _rel_l2(got, want))
    # the empty query block gets no gradient
    np.testing.assert_array_equal(np.asarray(grads[0][:, :block_q, 0], np.float32), 0.0)


def test_pallas_interpret_gradients_match_reference_float32():
    _check("pallas_interpret", jnp.float32, 1e-4, b=2, h=2, d=64, block_q=16, block_k=32, mq=4, mk=6,
           config=KernelConfig(triton=TritonConfig(num_stages=3)))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "d, block_q, block_k, forward",
    [(64, 64, 64, "triton"), (128, 128, 64, "triton"), (128, 64, 64, "triton"), (128, 64, 64, "mosaic")],
)
def test_pallas_gpu_gradients_match_reference_bfloat16(d, block_q, block_k, forward):
    _check("pallas", jnp.bfloat16, 2e-2, b=2, h=3, d=d, block_q=block_q, block_k=block_k, mq=12, mk=20,
           config=KernelConfig(forward=forward))


def test_whole_call_gradients_through_the_pallas_path_match_reference():
    # bsa_attention's Pallas path: one-pass reorder + block means, Pallas top-k, kernel, inverse reorder
    from kernels import BSAParams, bsa_attention

    latent = (4, 8, 8)
    params = BSAParams(sparsity=0.5)
    q, k, v, do = _problem(jax.random.key(11), b=1, h=2, d=64, block_q=64, block_k=64, mq=4, mk=4,
                           dtype=jnp.float32)

    def grads(backend):
        def loss(q, k, v):
            return jnp.sum(bsa_attention(q, k, v, latent, latent, params, backend=backend) * do)

        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    for name, got, want in zip(("dq", "dk", "dv"), grads("pallas_interpret"), grads("reference")):
        assert _rel_l2(got, want) < 1e-4, name
