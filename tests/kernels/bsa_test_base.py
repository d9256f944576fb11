"""The BSA checks every backend runs, in the manner of tokamax's attention `test_base.py`.

`BSABackendTests` holds the test bodies; test_bsa_backends.py has one subclass per backend (the jnp
reference, the Triton and Mosaic GPU kernels in their interpreters on the CPU, both natively on a GPU) that
says how the backend is called and which cases it takes: small ones in the interpreters, which are slow on a
2-core CPU, larger ones on a GPU. The ground truths are the original's fixtures (`bsa_fixture_cases`),
float32 dense masked attention over the same selection (`tests.helpers.bsa_cases`) and, on grids that the chunks
do not divide, the selection and attention of the real tokens alone (`tests.kernels.odd_grid_truth`).
"""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import (
    BSAConfigError,
    BSAParams,
    KernelConfig,
    MosaicConfig,
    TritonConfig,
    block_mask_from_indices,
    bsa_attention,
    from_chunk_order,
    select_blocks,
    sparse_attention_chunked,
    to_chunk_order,
)
from kernels.pallas_mosaic_backward import MosaicBackwardConfig
from longcat_jax.metrics import rel_l2
from tests.helpers.bsa_cases import BLOCK, dense_attention, dense_whole_call, fixture_inputs, random_case
from tests.kernels.odd_grid_truth import real_token_attention

OUTPUT_TOLERANCE = 2e-2  # bf16 inputs against a float32 truth
SELECTION_AGREEMENT = 0.99  # fraction of the original's block-mask entries our selection must reproduce


@dataclasses.dataclass(frozen=True)
class KernelCase:
    """A `sparse_attention_chunked` problem with uneven and empty selections (`random_case`) and kernel settings.

    list_width: pad the index lists to this many entries (more than one TMA copy per list in the Mosaic kernel);
    sentinel_padded: ascending lists padded with the sentinel Mk past their counts, as `select_blocks` gives them.
    """

    name: str
    b: int
    h: int
    d: int
    mq: int
    mk: int
    width: int
    block_q: int = BLOCK
    block_k: int = BLOCK
    dtype: type = jnp.bfloat16
    tolerance: float = OUTPUT_TOLERANCE
    list_width: int | None = None
    sentinel_padded: bool = False
    key_ranges: int | None = None
    triton: TritonConfig = TritonConfig()
    mosaic: MosaicConfig | None = None  # None: the forward's default (`KernelConfig.mosaic` or `.mosaic_fp8`)
    mosaic_backward: MosaicBackwardConfig = MosaicBackwardConfig()

    def inputs(self, seed):
        """q, k, v [B, S, H, D] in the case's dtype, indices [B, H, Mq, K_max] and counts [B, H, Mq]."""
        q, k, v, indices, counts = random_case(
            seed, b=self.b, h=self.h, d=self.d, mq=self.mq, mk=self.mk, width=self.width,
            block_q=self.block_q, block_k=self.block_k, dtype=self.dtype, sentinel_padded=self.sentinel_padded,
        )
        if self.list_width:
            indices = jnp.pad(indices, ((0, 0), (0, 0), (0, 0), (0, self.list_width - self.width)))
        return q, k, v, indices, counts


@dataclasses.dataclass(frozen=True)
class WholeCallCase:
    """A `bsa_attention` call (top-k, sparsity 0.5) on one batch of 2 heads of size 64 over a latent grid."""

    name: str
    latent: tuple[int, int, int]
    chunk: tuple[int, int, int]
    dtype: type = jnp.bfloat16
    tolerance: float = OUTPUT_TOLERANCE


@dataclasses.dataclass(frozen=True)
class OddGridCase:
    """A `bsa_attention` call on grids that the chunks do not divide (padded inside), 2 heads of size `d`.

    gradients: also compare dq, dk, dv (off where the forward kernel is too slow in its interpreter: the backward
    kernels do not depend on the forward one; TestTritonInterpret and TestMosaicBackwardInterpret check each backward
    on padded grids).
    """

    name: str
    latent_q: tuple[int, int, int]
    latent_k: tuple[int, int, int]
    chunk_q: tuple[int, int, int]
    chunk_k: tuple[int, int, int]
    sparsity: float | None = 0.5
    cdf_threshold: float | None = None
    d: int = 64
    dtype: type = jnp.bfloat16
    tolerance: float = OUTPUT_TOLERANCE
    gradients: bool = True

    @property
    def params(self) -> BSAParams:
        return BSAParams(sparsity=self.sparsity, cdf_threshold=self.cdf_threshold,
                         chunk_3d_shape_q=self.chunk_q, chunk_3d_shape_k=self.chunk_k)


class BSABackendTests:
    """The checks every BSA backend runs; a subclass per backend sets the attributes below.

    backend: the `backend` argument; forward: `KernelConfig.forward` (None for the reference, which takes none);
    backward: `KernelConfig.backward`; fp8: `KernelConfig.fp8` (the FP8 forward: its cases' `mosaic` settings go to
    `mosaic_fp8`, and every gradient test checks instead that differentiating it is refused).
    whole_call_tolerance: rel_l2 bound of the whole call against the original's fixtures.
    fixture_dtype / fixture_tolerance: inputs and rel_l2 bound of the fixture runs given the original's mask.
    fixture_names: the fixtures this backend runs (None: every one it takes); min_fixture_cases: how many at least.
    forward_cases / gradient_cases / whole_call_cases / odd_grid_cases: the parameters of the tests taking
    `forward_case`, `gradient_case`, `whole_call_case` and `odd_grid_case`.
    A subclass overrides a test with a `pytest.skip` (and the reason) where it does not apply to its backend.
    """

    backend: str
    forward: str | None = None
    backward: str = "triton"
    fp8: bool = False
    whole_call_tolerance: float = OUTPUT_TOLERANCE
    fixture_dtype: type = jnp.bfloat16
    fixture_tolerance: float = OUTPUT_TOLERANCE
    fixture_names: frozenset[str] | None = None
    min_fixture_cases: int = 1
    forward_cases: tuple[KernelCase, ...] = ()
    gradient_cases: tuple[KernelCase, ...] = ()
    whole_call_cases: tuple[WholeCallCase, ...] = ()
    odd_grid_cases: tuple[OddGridCase, ...] = ()

    def pytest_generate_tests(self, metafunc):
        """Parametrizes the `*_case` arguments with this backend's cases."""
        for argument, cases in (
            ("forward_case", self.forward_cases),
            ("gradient_case", self.gradient_cases),
            ("whole_call_case", self.whole_call_cases),
            ("odd_grid_case", self.odd_grid_cases),
        ):
            if argument in metafunc.fixturenames:
                metafunc.parametrize(argument, cases, ids=[case.name for case in cases])

    def kernel_config(self, case: KernelCase | None = None) -> KernelConfig | None:
        """The kernel settings of a case (None: the defaults) for this backend's forward kernel."""
        if self.forward is None:
            return None
        if case is None:
            return KernelConfig(forward=self.forward, backward=self.backward, fp8=self.fp8)
        mosaic = {} if case.mosaic is None else {"mosaic_fp8" if self.fp8 else "mosaic": case.mosaic}
        return KernelConfig(forward=self.forward, backward=self.backward, triton=case.triton, **mosaic,
                            mosaic_backward=case.mosaic_backward, key_ranges=case.key_ranges, fp8=self.fp8)

    def assert_gradients_refused(self, attention, *qkv):
        """The FP8 forward's check in place of a gradient test: differentiating it names the fix."""
        def loss(q, k, v):
            return jnp.sum(attention(q, k, v).astype(jnp.float32))

        with pytest.raises(BSAConfigError, match="fp8=True.*no backward.*fp8=False"):
            jax.grad(loss, argnums=(0, 1, 2))(*qkv)

    def takes(self, params: BSAParams) -> bool:
        """Whether this backend runs blocks of these sizes (the Mosaic kernels: 64 tokens only)."""
        mosaic = self.forward == "mosaic" or self.backward == "mosaic"
        return not mosaic or params.chunk_size_q == params.chunk_size_k == BLOCK

    def chunked_attention(self, block_q: int, block_k: int, case: KernelCase | None = None):
        """`sparse_attention_chunked` on this backend with a case's settings, jitted: (q, k, v, indices, counts) -> out."""
        config = self.kernel_config(case)

        def attention(q, k, v, indices, counts):
            return sparse_attention_chunked(
                q, k, v, indices, counts, block_q, block_k, backend=self.backend, kernel_config=config
            )

        return jax.jit(attention)

    def fixture_cases(self, bsa_fixture_cases) -> list:
        """The fixtures this backend runs: those it takes, limited to `fixture_names` where set."""
        cases = [
            case for case in bsa_fixture_cases
            if self.takes(case[1]) and (self.fixture_names is None or case[0] in self.fixture_names)
        ]
        if self.fixture_names is not None:
            assert {case[0] for case in cases} == self.fixture_names
        assert len(cases) >= self.min_fixture_cases
        return cases

    def test_given_the_mask_matches_the_original(self, bsa_fixture_cases):
        for case in self.fixture_cases(bsa_fixture_cases):
            name, params, latent_q, _, arrays = case
            q, k, v, indices, counts = fixture_inputs(case, self.fixture_dtype)
            out = self.chunked_attention(params.chunk_size_q, params.chunk_size_k)(q, k, v, indices, counts)
            chex.assert_shape(out, q.shape)
            chex.assert_type(out, self.fixture_dtype)
            out = from_chunk_order(out, latent_q, params.chunk_3d_shape_q)
            assert rel_l2(out, arrays["out"]) < self.fixture_tolerance, name

    def test_selection_matches_the_original_block_mask(self, bsa_fixture_cases):
        for name, params, latent_q, latent_k, arrays in bsa_fixture_cases:
            q = to_chunk_order(arrays["q"], latent_q, params.chunk_3d_shape_q)
            k = to_chunk_order(arrays["k"], latent_k, params.chunk_3d_shape_k)
            indices, counts = select_blocks(q, k, params, backend=self.backend)
            mask = block_mask_from_indices(indices, counts, arrays["block_mask"].shape[-1])
            agreement = float(jnp.mean(mask == arrays["block_mask"].astype(bool)))
            assert agreement >= SELECTION_AGREEMENT, f"{name}: selection agrees on {agreement:.4f} of the mask entries"

    def test_whole_call_matches_the_original(self, bsa_fixture_cases):
        for name, params, latent_q, latent_k, arrays in self.fixture_cases(bsa_fixture_cases):
            out = bsa_attention(
                arrays["q"], arrays["k"], arrays["v"], latent_q, latent_k, params,
                backend=self.backend, kernel_config=self.kernel_config(),
            )
            chex.assert_type(out, jnp.bfloat16)
            assert rel_l2(out, arrays["out"]) < self.whole_call_tolerance, name

    def test_forward_matches_dense_attention(self, forward_case):
        case = forward_case
        q, k, v, indices, counts = case.inputs(3)
        out = self.chunked_attention(case.block_q, case.block_k, case)(q, k, v, indices, counts)
        chex.assert_shape(out, q.shape)
        chex.assert_type(out, case.dtype)
        want = jax.jit(dense_attention, static_argnums=(5, 6))(q, k, v, indices, counts, case.block_q, case.block_k)
        assert rel_l2(out, want) < case.tolerance
        np.testing.assert_array_equal(np.asarray(out[0, :case.block_q, 0], np.float32), 0.0)  # the empty selection

    def test_gradients_match_dense_attention(self, gradient_case):
        case = gradient_case
        q, k, v, indices, counts = case.inputs(5)
        if self.fp8:
            attention = self.chunked_attention(case.block_q, case.block_k, case)
            self.assert_gradients_refused(lambda q, k, v: attention(q, k, v, indices, counts), q, k, v)
            return
        do = jax.random.normal(jax.random.key(6), q.shape, jnp.float32)  # [B, Sq, H, D]

        def grads(attention, *qkv):
            def loss(q, k, v):
                return jnp.sum(attention(q, k, v).astype(jnp.float32) * do)

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*qkv)

        attention = self.chunked_attention(case.block_q, case.block_k, case)
        got = grads(lambda q, k, v: attention(q, k, v, indices, counts), q, k, v)
        want = grads(lambda q, k, v: dense_attention(q, k, v, indices, counts, case.block_q, case.block_k),
                     *(x.astype(jnp.float32) for x in (q, k, v)))
        for name, g, w, x in zip(("dq", "dk", "dv"), got, want, (q, k, v)):
            chex.assert_equal_shape((g, x))
            chex.assert_type(g, case.dtype)
            assert np.all(np.isfinite(np.asarray(g, np.float32))), name
            assert rel_l2(g, w) < case.tolerance, (name, rel_l2(g, w))
        np.testing.assert_array_equal(np.asarray(got[0][0, :case.block_q, 0], np.float32), 0.0)  # empty: no gradient

    def test_whole_call_and_gradients_match_dense_attention(self, whole_call_case):
        case = whole_call_case
        latent = case.latent
        params = BSAParams(sparsity=0.5, chunk_3d_shape_q=case.chunk, chunk_3d_shape_k=case.chunk)
        shape = (1, math.prod(latent), 2, 64)  # [B, S, H, D]
        q, k, v, do = (jax.random.normal(key, shape, jnp.float32) for key in jax.random.split(jax.random.key(4), 4))

        def output_and_grads(attention, *qkv):
            def loss(q, k, v):
                out = attention(q, k, v)
                return jnp.sum(out.astype(jnp.float32) * do), out

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(*qkv)

        def attention(q, k, v):
            return bsa_attention(q, k, v, latent, latent, params, backend=self.backend, kernel_config=self.kernel_config())

        inputs = [x.astype(case.dtype) for x in (q, k, v)]
        if self.fp8:  # the output alone, then the refused gradients
            got = jax.jit(attention)(*inputs)
            chex.assert_type(got, case.dtype)
            assert rel_l2(got, dense_whole_call(q, k, v, latent, latent, params)) < case.tolerance
            self.assert_gradients_refused(attention, *inputs)
            return
        got_grads, got = output_and_grads(attention, *inputs)
        want_grads, want = output_and_grads(lambda q, k, v: dense_whole_call(q, k, v, latent, latent, params), q, k, v)
        chex.assert_type(got, case.dtype)
        assert rel_l2(got, want) < case.tolerance
        for name, g, w in zip(("dq", "dk", "dv"), got_grads, want_grads):
            assert rel_l2(g, w) < case.tolerance, (name, rel_l2(g, w))

    def test_odd_grid_matches_the_real_tokens_alone(self, odd_grid_case):
        case = odd_grid_case
        keys = jax.random.split(jax.random.key(7), 4)
        q, do = (jax.random.normal(key, (1, math.prod(case.latent_q), 2, case.d)) for key in keys[:2])  # [B, Sq, H, D]
        k, v = (jax.random.normal(key, (1, math.prod(case.latent_k), 2, case.d)) for key in keys[2:])  # [B, Sk, H, D]

        def attention(q, k, v):
            return bsa_attention(q, k, v, case.latent_q, case.latent_k, case.params, backend=self.backend,
                                 kernel_config=self.kernel_config())

        def truth(q, k, v):
            return real_token_attention(q, k, v, case.latent_q, case.latent_k, case.params)

        inputs = [x.astype(case.dtype) for x in (q, k, v)]
        got = jax.jit(attention)(*inputs)
        chex.assert_shape(got, q.shape)
        chex.assert_type(got, case.dtype)
        # the truth takes the same rounded inputs, so that bf16 rounding cannot flip a near-tied selection
        assert rel_l2(got, truth(*inputs)) < case.tolerance
        if self.fp8:
            self.assert_gradients_refused(attention, *inputs)
            return
        if not case.gradients:
            return

        def grads(attention):
            def loss(q, k, v):
                return jnp.sum(attention(q, k, v).astype(jnp.float32) * do)

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

        got_grads = grads(attention)(*inputs)
        want_grads = grads(truth)(*(x.astype(jnp.float32) for x in inputs))
        for name, g, w, x in zip(("dq", "dk", "dv"), got_grads, want_grads, inputs):
            chex.assert_equal_shape((g, x))
            assert np.all(np.isfinite(np.asarray(g, np.float32))), name
            assert rel_l2(g, w) < case.tolerance, (name, rel_l2(g, w))
