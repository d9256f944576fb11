"""Shared inputs and measures of the BSA kernel tests."""

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 64


def rel_l2(x, ref) -> float:
    """||x - ref|| / ||ref|| in float64."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def random_case(seed, *, b, h, d, mq, mk, width):
    """bf16 q [b, mq*64, h, d], k and v [b, mk*64, h, d]; unsorted lists of `width` distinct key blocks with
    uneven counts (1 to width); query block 0 of (batch 0, head 0) selects nothing."""
    keys = jax.random.split(jax.random.key(seed), 5)
    q, k, v = (jax.random.normal(key, (b, m * BLOCK, h, d), jnp.float32).astype(jnp.bfloat16)
               for key, m in zip(keys[:3], (mq, mk, mk)))
    indices = jnp.argsort(jax.random.uniform(keys[3], (b, h, mq, mk)), axis=-1)[..., :width].astype(jnp.int32)
    counts = jax.random.randint(keys[4], (b, h, mq), 1, width + 1).at[0, 0, 0].set(0).astype(jnp.int32)
    return q, k, v, indices, counts


def check_gradients_match_reference(config, **shape):
    """dq, dk, dv of the interpreted Pallas kernels under `config` against the float32 jnp reference."""
    from kernels import sparse_attention_chunked

    q, k, v, indices, counts = random_case(5, **shape)
    do = jax.random.normal(jax.random.key(6), q.shape, jnp.float32)

    def grads(backend, config, *xs):
        def loss(q, k, v):
            out = sparse_attention_chunked(q, k, v, indices, counts, BLOCK, BLOCK, backend=backend,
                                           kernel_config=config)
            return jnp.sum(out.astype(jnp.float32) * do)

        return jax.grad(loss, argnums=(0, 1, 2))(*xs)

    got = grads("pallas_interpret", config, q, k, v)
    want = grads("reference", None, *(x.astype(jnp.float32) for x in (q, k, v)))
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert rel_l2(g, w) < 2e-2, name
