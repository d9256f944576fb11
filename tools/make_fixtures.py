"""Regenerates the reference fixtures (the `longcat_ref` folder) with the original LongCat-Video PyTorch code.

Not run in CI, and not a dependency of this project: it needs a checkout of the original
(meituan-longcat/LongCat-Video) and its Python requirements (torch, diffusers, transformers, einops,
loguru, ftfy; triton must import, as the original's attention module imports it, but no GPU is used):

    python tools/make_fixtures.py --original /path/to/LongCat-Video --out /tmp/longcat_ref
    python tools/trim_fixtures.py --source /tmp/longcat_ref --dest tests/fixtures/longcat_ref

Everything runs on the CPU: small random models with the real architectures (the original's
`LongCatVideoTransformer3DModel`, `AutoencoderKLWan` and `FlowMatchEulerDiscreteScheduler`, and transformers'
`UMT5EncoderModel`), weights rounded to bf16 and saved in the original names and layouts, the expected outputs
computed in float32 from those bf16 values. Where the original calls flash-attn, a stand-in module with the same
call signatures computes the same math with `scaled_dot_product_attention`. Where it calls its Triton BSA kernel,
the original's own gating (`mean_pooling_compression`, `get_select_indices`) selects the key blocks and the
attention over them is a dense masked softmax in float64 (a query block with nothing selected outputs 0).
`torch.compile` is switched off, so the original's compiled helpers run eagerly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # the original's @torch.compile helpers run eagerly on the CPU

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

try:  # the fixtures are the original's outputs: its PyTorch code runs here
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
except ModuleNotFoundError as missing:
    sys.exit(f"tools/make_fixtures.py runs the original's PyTorch code and needs {missing.name}: "
             "pip install torch (the CPU build does) and the original's requirements listed above")

log = logging.getLogger("make_fixtures")

PARTS = ("dit", "bsa", "vae", "t5", "scheduler", "sample")
BLOCK_MASK_LAYOUT = "B,H,num_q_blocks,num_k_blocks; blocks in (Nt,Nh,Nw) raster order of 3D chunks"
# name, latent q (T, H, W), latent k, sparsity, cdf threshold, chunk q, chunk k, batch, heads, head_dim
BSA_CASES = [
    ("topk_0.875", (8, 16, 16), (8, 16, 16), 0.875, None, (4, 4, 4), (4, 4, 4), 1, 2, 64),
    ("topk_0.9375", (8, 16, 16), (8, 16, 16), 0.9375, None, (4, 4, 4), (4, 4, 4), 2, 2, 64),
    ("topk_0.75_d128", (4, 16, 16), (4, 16, 16), 0.75, None, (4, 4, 4), (4, 4, 4), 1, 2, 128),
    ("cdf_0.98", (8, 16, 16), (8, 16, 16), None, 0.98, (4, 4, 4), (4, 4, 4), 1, 2, 64),
    ("cdf_0.95_topk_0.9375", (8, 16, 16), (8, 16, 16), 0.9375, 0.95, (4, 4, 4), (4, 4, 4), 1, 2, 64),
    ("long_video_chunk_8x4x4", (16, 16, 16), (16, 16, 16), 0.875, None, (8, 4, 4), (8, 4, 4), 1, 2, 64),
    ("asym_chunks_q2x4x8_k4x4x4", (8, 16, 16), (8, 16, 16), 0.75, None, (2, 4, 8), (4, 4, 4), 1, 2, 64),
    ("cond_q_shorter_than_k", (4, 16, 16), (8, 16, 16), 0.75, None, (4, 4, 4), (4, 4, 4), 1, 2, 64),
]
DIT_BSA_PARAMS = {"sparsity": 0.75, "cdf_threshold": None, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]}
LORA_RANK, LORA_ALPHA = 8, 4
VAE_CONFIG = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                  temperal_downsample=[False, True, True], dropout=0.0)


class Original:
    """The original's modules, imported from a checkout, with flash-attn and the Triton BSA call stood in for."""

    def __init__(self, checkout: Path):
        if not (checkout / "longcat_video" / "modules" / "longcat_video_dit.py").is_file():
            raise SystemExit(f"{checkout} is not a LongCat-Video checkout (no longcat_video/modules/longcat_video_dit.py); "
                             "pass the folder cloned from meituan-longcat/LongCat-Video with --original")
        sys.path.insert(0, str(checkout))
        from longcat_video import pipeline_longcat_video
        from longcat_video.block_sparse_attention import bsa_interface
        from longcat_video.modules import autoencoder_kl_wan, longcat_video_dit, scheduling_flow_match_euler_discrete

        # after the imports (diffusers probes for flash_attn when imported); the original imports it at call time
        sys.modules["flash_attn"] = _flash_attn_stand_in()

        self.bsa = bsa_interface
        self.dit_class = longcat_video_dit.LongCatVideoTransformer3DModel
        self.vae_class = autoencoder_kl_wan.AutoencoderKLWan
        self.scheduler_class = scheduling_flow_match_euler_discrete.FlowMatchEulerDiscreteScheduler
        self.pipeline_class = pipeline_longcat_video.LongCatVideoPipeline
        self.selected_masks: list[torch.Tensor] = []  # block masks of the stand-in's calls, in call order
        self.keep_float64 = False  # bsa_cases keep the float64 attention output; the DiT casts back
        bsa_interface.flash_attn_bsa = self._bsa_stand_in

    def _bsa_stand_in(self, q, k, v, chunk_size_q, chunk_size_k, sparsity, cdf_threshold, sm_scale, use_tma=False):
        """The original's gating, then attention over the selected key blocks as a float64 masked softmax.

        q [B, H, Sq, D], k and v [B, H, Sk, D], tokens already in 3D-chunk order (as the Triton kernel gets them).
        """
        q_pooled = self.bsa.mean_pooling_compression(q, chunk_size_q)  # [B, H, Mq, D]
        k_pooled = self.bsa.mean_pooling_compression(k, chunk_size_k)  # [B, H, Mk, D]
        indices, counts = self.bsa.get_select_indices(q_pooled, k_pooled, sparsity, cdf_threshold)
        num_k_blocks = k_pooled.shape[2]
        taken = torch.arange(indices.shape[-1]) < counts[..., None]  # [B, H, Mq, listed]
        mask = torch.zeros(*indices.shape[:3], num_k_blocks + 1, dtype=torch.bool)
        mask.scatter_(-1, torch.where(taken, indices.long(), num_k_blocks), True)
        mask = mask[..., :num_k_blocks]  # [B, H, Mq, Mk]
        self.selected_masks.append(mask)
        tokens = mask.repeat_interleave(chunk_size_q, dim=2).repeat_interleave(chunk_size_k, dim=3)  # [B, H, Sq, Sk]
        scores = (q.double() @ k.double().transpose(-1, -2)) * sm_scale
        weights = torch.softmax(scores.masked_fill(~tokens, float("-inf")), dim=-1).nan_to_num(0.0)
        out = weights @ v.double()  # [B, H, Sq, D]
        return out if self.keep_float64 else out.to(q.dtype)


def _flash_attn_stand_in() -> types.ModuleType:
    """A `flash_attn` module whose two functions the original calls compute the same math with SDPA."""

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None):  # [B, S, H, D]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             scale=softmax_scale)
        return out.transpose(1, 2)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None):
        outs = []  # q [total_q, H, D], k and v [total_k, H, D]: one sequence per batch item
        for i in range(len(cu_seqlens_q) - 1):
            qs, ks = slice(cu_seqlens_q[i], cu_seqlens_q[i + 1]), slice(cu_seqlens_k[i], cu_seqlens_k[i + 1])
            outs.append(flash_attn_func(q[None, qs], k[None, ks], v[None, ks], softmax_scale=softmax_scale)[0])
        return torch.cat(outs)

    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    return module


def bf16_valued(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Perturbs every per-channel parameter (biases, norm scales: not left at 0 or 1); rounds all weights to bf16."""
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 1 and param.numel() == param.shape[0]:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.to(torch.bfloat16).to(torch.float32).eval()


def text_mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()  # [B, width] int64


def planted_block_scores(case: tuple, mq: int, mk: int, g: torch.Generator) -> torch.Tensor:
    """Block scores [B, H, Mq, Mk] to plant, chosen so that the selection has a clear margin everywhere.

    Top-k: the top-k count of key blocks per query block score 10 * sqrt(D), the others 0. CDF (alone or with top-k):
    per query block, n strong blocks (at least the top-k count) and one weaker boundary block over a tail of zeros,
    sized so that the softmax mass of the strong blocks is the threshold - 0.015 and with the boundary block
    it is the threshold + 0.015: the original then keeps exactly the n strong blocks (it counts the blocks whose
    cumulative mass stays at or below the threshold), and bf16 rounding cannot move either side across it.
    """
    _, _, _, sparsity, cdf, _, _, b, h, d = case
    order = torch.rand(b, h, mq, mk, generator=g).argsort(dim=-1).argsort(dim=-1)  # a random rank per key block
    top_k = int((1 - sparsity) * mk) if sparsity is not None else 1
    if cdf is None:
        return torch.where(order < top_k, 10 * d**0.5, 0.0)
    if not 0.5 < cdf < 0.985:
        raise SystemExit(f"{case[0]}: cdf_threshold {cdf} leaves no room for a 0.015 margin on both sides")
    strong = torch.randint(max(top_k, 1), max(top_k, 1) + 8, (b, h, mq, 1), generator=g)
    strong_mass, boundary_mass, tail_mass = cdf - 0.015, 0.03, 1 - cdf - 0.015
    total = (mk - strong - 1) / tail_mass  # softmax normaliser with tail logits 0
    strong_logit, boundary_logit = torch.log(strong_mass * total / strong), torch.log(boundary_mass * total)
    logits = torch.where(order < strong, strong_logit, torch.where(order == strong, boundary_logit, 0.0))
    return logits * d**0.5  # the CDF rule takes the softmax of scores / sqrt(D)


def planted_qkv(original: Original, case: tuple, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """q, k, v [B, H, S, D] (raster order) whose pooled 3D chunks give `planted_block_scores` exactly.

    Each chunk is a constant offset plus unit noise with zero mean over the chunk (so mean pooling returns the
    offset, while the tokens still differ): query block i gets alpha * u_i (orthonormal u_i), key block j gets the
    sum over i of score(i, j) / alpha * u_i.
    """
    _, latent_q, latent_k, _, _, chunk_q, chunk_k, b, h, d = case
    grid_q = [n // c for n, c in zip(latent_q, chunk_q)]
    grid_k = [n // c for n, c in zip(latent_k, chunk_k)]
    mq, mk = int(np.prod(grid_q)), int(np.prod(grid_k))
    size_q, size_k = int(np.prod(chunk_q)), int(np.prod(chunk_k))
    if mq > d:
        raise SystemExit(f"{case[0]}: {mq} query blocks need {mq} orthonormal directions, more than head_dim {d}")
    alpha = (10 * d**0.5) ** 0.5
    directions = torch.linalg.qr(torch.randn(b, h, d, mq, generator=g)).Q.transpose(-1, -2)  # [B, H, Mq, D]
    scores = planted_block_scores(case, mq, mk, g)  # [B, H, Mq, Mk]

    def chunks(offsets, size):  # offsets [B, H, M, D] -> tokens [B, H, M * size, D] in chunk order
        noise = torch.randn(b, h, offsets.shape[2], size, d, generator=g)
        noise = noise - noise.mean(dim=3, keepdim=True)
        return (offsets[:, :, :, None] + noise).reshape(b, h, -1, d)

    q = chunks(alpha * directions, size_q)
    k = chunks(scores.transpose(-1, -2) @ directions / alpha, size_k)
    v = torch.randn(b, h, mk * size_k, d, generator=g)
    to_raster = original.bsa.rearrange_3d_block_to_THW  # chunk order -> (T, H, W) raster order
    q = to_raster(q, *grid_q, *chunk_q, d)
    k, v = (to_raster(x, *grid_k, *chunk_k, d) for x in (k, v))
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def make_dit(original: Original, out: Path, hidden: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Writes dit/ and lora_rank8.safetensors; returns the `dit_cases` tensors."""
    config = dict(in_channels=16, out_channels=16, hidden_size=hidden, depth=2, num_heads=4, caption_channels=64,
                  mlp_ratio=4, adaln_tembed_dim=64, frequency_embedding_size=256, patch_size=[1, 2, 2],
                  enable_flashattn3=False, enable_flashattn2=False, enable_xformers=False, enable_bsa=False,
                  bsa_params=None, cp_split_hw=[1, 1], text_tokens_zero_pad=True)
    dit = bf16_valued(original.dit_class(**config), g)
    dit.to(torch.bfloat16).save_pretrained(out / "dit", safe_serialization=True, max_shard_size="3MB")
    dit.to(torch.float32)
    for block in dit.blocks:  # the flash-attn 2 code path, into the SDPA stand-in (config.json keeps it off)
        block.attn.enable_flashattn2 = block.cross_attn.enable_flashattn2 = True

    lora = {}
    for name, module in dit.named_modules():
        if name.startswith("blocks.") and isinstance(module, torch.nn.Linear):
            key = "lora___lorahyphen___" + name.replace(".", "___lorahyphen___")
            down = 0.3 * torch.randn(LORA_RANK, module.in_features, generator=g)
            up = 0.3 * torch.randn(module.out_features, LORA_RANK, generator=g)
            lora |= {f"{key}.lora_down.weight": down.bfloat16(), f"{key}.lora_up.weight": up.bfloat16(),
                     f"{key}.alpha_scale": torch.tensor(LORA_ALPHA / LORA_RANK)}
    save_file(lora, str(out / "lora_rank8.safetensors"))

    t = {"t2v.hidden_states": torch.randn(2, 16, 4, 16, 16, generator=g), "t2v.timestep": torch.tensor([999.0, 437.5]),
         "t2v.encoder_hidden_states": torch.randn(2, 1, 12, 64, generator=g),
         "t2v.encoder_attention_mask": text_mask([12, 7], 12),
         "i2v.timestep": torch.tensor([[0.0, 800, 800, 800], [0.0, 250, 250, 250]]),
         "kvcache.cond_latents": torch.randn(2, 16, 2, 16, 16, generator=g),
         "kvcache.hidden_states": torch.randn(2, 16, 2, 16, 16, generator=g), "kvcache.timestep": torch.tensor([600.0, 600.0]),
         "bsa.hidden_states": torch.randn(1, 16, 8, 16, 16, generator=g)}
    text = (t["t2v.encoder_hidden_states"], t["t2v.encoder_attention_mask"])
    with torch.no_grad(), tqdm(total=5, desc="dit cases") as bar:
        t["t2v.out"] = dit(t["t2v.hidden_states"], t["t2v.timestep"], *text)
        bar.update()
        t["i2v.out"] = dit(t["t2v.hidden_states"], t["i2v.timestep"], *text, num_cond_latents=1)
        bar.update()
        _, kv = dit(t["kvcache.cond_latents"], torch.zeros(2, 2), torch.zeros_like(text[0]), return_kv=True,
                    skip_crs_attn=True)
        t["kvcache.block0.k"], t["kvcache.block0.v"] = kv[0]  # [B, H, S, D]
        t["kvcache.out"] = dit(t["kvcache.hidden_states"], t["kvcache.timestep"], *text, num_cond_latents=2,
                               kv_cache_dict=kv)
        bar.update()
        dit.load_lora(str(out / "lora_rank8.safetensors"), "fixture", multiplier=1.0, lora_network_dim=LORA_RANK,
                      lora_network_alpha=LORA_ALPHA)
        dit.enable_loras(["fixture"])
        t["lora.out"] = dit(t["t2v.hidden_states"], t["t2v.timestep"], *text)
        dit.disable_all_loras()
        bar.update()
        for block in dit.blocks:
            block.attn.bsa_params = DIT_BSA_PARAMS
        dit.enable_bsa()
        t["bsa.out"] = dit(t["bsa.hidden_states"], torch.tensor([700.0]), text[0][:1], text[1][:1])
        dit.disable_bsa()
        bar.update()
    cases = [
        {"name": "t2v", "call": "forward(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask)"},
        {"name": "i2v", "call": "same inputs as t2v; timestep [B,T]; num_cond_latents=1"},
        {"name": "kvcache", "call": "kv = forward(cond_latents, zeros[B,2], zeros text, return_kv=True, skip_crs_attn=True); "
                                    "out = forward(hidden_states, timestep, encoder_hidden_states(t2v), "
                                    "encoder_attention_mask(t2v), num_cond_latents=2, kv_cache_dict=kv); cached k,v are "
                                    "after qk-norm and before RoPE, layout [B,H,S,D]"},
        {"name": "lora", "call": f"t2v inputs with lora_rank8.safetensors applied (rank {LORA_RANK}, alpha {LORA_ALPHA}, "
                                 "multiplier 1.0: delta = up(down(x)) * alpha/rank)"},
        {"name": "bsa", "call": "enable_bsa with bsa_params {sparsity: 0.75, cdf_threshold: null, chunk_3d_shape_q/k: "
                                "[4,4,4]}; batch 1; t2v text inputs of item 0; timestep [700]"},
    ]
    spec = {"config": config, "cases": cases, "dtype": "weights bf16 on disk, reference computed in float32"}
    (out / "dit_cases.json").write_text(json.dumps(spec, indent=1) + "\n")
    return t


def make_bsa_cases(original: Original, out: Path, g: torch.Generator) -> None:
    """Writes bsa_cases.{json,safetensors}: q, k, v bf16 [B, H, S, D] in (T, H, W) raster order, out float32."""
    tensors, specs = {}, []
    original.keep_float64 = True
    for case in tqdm(BSA_CASES, desc="bsa cases"):
        name, latent_q, latent_k, sparsity, cdf, chunk_q, chunk_k, *_ = case
        q, k, v = planted_qkv(original, case, g)
        original.selected_masks.clear()
        with torch.no_grad():
            result = original.bsa.flash_attn_bsa_3d(q, k, v, latent_q, latent_k, sparsity=sparsity, cdf_threshold=cdf,
                                                    chunk_3d_shape_q=list(chunk_q), chunk_3d_shape_k=list(chunk_k))
        (mask,) = original.selected_masks
        tensors |= {f"{name}.q": q, f"{name}.k": k, f"{name}.v": v, f"{name}.out": result.float(),
                    f"{name}.block_mask": mask.to(torch.uint8)}
        specs.append({"name": name, "layout": "B,H,S,D (tokens in T,H,W raster order)", "latent_shape_q": list(latent_q),
                      "latent_shape_k": list(latent_k), "sparsity": sparsity, "cdf_threshold": cdf,
                      "chunk_3d_shape_q": list(chunk_q), "chunk_3d_shape_k": list(chunk_k),
                      "block_mask_layout": BLOCK_MASK_LAYOUT, "selected_per_row": float(mask.sum(-1).double().mean())})
    original.keep_float64 = False
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(out / "bsa_cases.safetensors"))
    (out / "bsa_cases.json").write_text(json.dumps(specs, indent=1) + "\n")


def make_vae(original: Original, out: Path, g: torch.Generator) -> tuple[dict, dict]:
    """Writes vae/; returns the `vae.*` tensors and the json entry."""
    vae = bf16_valued(original.vae_class(**VAE_CONFIG), g)
    vae.to(torch.bfloat16).save_pretrained(out / "vae", safe_serialization=True)
    vae.to(torch.float32)
    video = torch.rand(1, 3, 9, 32, 48, generator=g) * 2 - 1  # [B, 3, F, H, W] in [-1, 1]
    with torch.no_grad():
        posterior = vae.encode(video).latent_dist
        decoded = vae.decode(posterior.mode()).sample
    tensors = {"vae.video": video, "vae.latent_mean": posterior.mode(), "vae.latent_logvar": posterior.logvar,
               "vae.decoded": decoded}
    entry = {"config": VAE_CONFIG,
             "call": "latent_mean = encode(video).latent_dist.mode(); decoded = decode(latent_mean) (clamped to [-1,1]); "
                     "video [B,3,F,H,W] in [-1,1], F = 1 + 4k; latent [B,16,1+(F-1)/4,H/8,W/8]",
             "note": "decode/encode are causal and chunked over time (first frame alone, then 4 at a time); weights are "
                     "bf16 on disk, reference computed in float32"}
    return tensors, entry


def make_t5(out: Path, g: torch.Generator) -> tuple[dict, dict]:
    """Writes text_encoder/ (bf16-valued weights stored float32); returns the `t5.*` tensors and the json entry."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=384, d_model=64, d_kv=16, d_ff=160, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
                        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    encoder = bf16_valued(UMT5EncoderModel(config), g)
    encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    mask = text_mask([24, 9], 24)
    input_ids = torch.randint(1, config.vocab_size, (2, 24), generator=g) * mask
    with torch.no_grad():
        hidden = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
    tensors = {"t5.input_ids": input_ids, "t5.attention_mask": mask, "t5.last_hidden_state": hidden}
    entry = {"call": "last_hidden_state = UMT5EncoderModel(input_ids, attention_mask)",
             "note": "each layer has its own relative position bias (UMT5, unlike T5); weights bf16 on disk, reference "
                     "in float32; compare only positions where attention_mask == 1"}
    return tensors, entry


def make_pipeline_parts(original: Original, out: Path, parts: set[str], g: torch.Generator) -> None:
    """Writes pipeline_cases.{json,safetensors}: VAE, UMT5, scheduler tables and the 4-step sampling loops."""
    tensors, spec = {}, {}
    if "vae" in parts:
        vae_tensors, spec["vae"] = make_vae(original, out, g)
        tensors |= vae_tensors
    if "t5" in parts:
        t5_tensors, spec["t5"] = make_t5(out, g)
        tensors |= t5_tensors
    scheduler = original.scheduler_class()
    # the pipeline reads only the VAE's scale factors outside the parts run here
    pipe = original.pipeline_class(tokenizer=None, text_encoder=None, vae=original.vae_class(**VAE_CONFIG),
                                   scheduler=scheduler, dit=None)
    pipe.device = "cpu"
    if "scheduler" in parts:
        cases = [("sched_50_plain", 50, False), ("sched_16_distill", 16, True), ("sched_4_plain", 4, False)]
        for name, steps, distill in cases:
            scheduler.set_timesteps(steps, sigmas=pipe.get_timesteps_sigmas(steps, use_distill=distill), device="cpu")
            tensors |= {f"{name}.sigmas": scheduler.sigmas.float(), f"{name}.timesteps": scheduler.timesteps.float()}
        spec["scheduler"] = {"config": dict(scheduler.config),
                             "cases": [{"name": n, "steps": s, "use_distill": d} for n, s, d in cases],
                             "note": "sigmas include the final 0; timesteps = sigmas[:-1] * 1000"}
    if "sample" in parts:
        tensors |= sample_loops(original, out, pipe, g)
        spec["sample"] = {
            "dit": "dit/ of tools/make_fixtures.py (same --hidden flag)",
            "t2v": "4 steps, sigmas linspace(1,0.001,4), guidance 4.0 with CFG-zero optimized scale (pred = u*s + "
                   "g*(c - u*s), s = <c,u>/(|u|^2+1e-8) per batch item), Euler step on -pred",
            "i2v": "same schedule, no CFG, num_cond_latents=1: timestep 0 on frame 0, only frames 1.. updated"}
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(out / "pipeline_cases.safetensors"))
    (out / "pipeline_cases.json").write_text(json.dumps(spec, indent=1) + "\n")


def sample_loops(original: Original, out: Path, pipe, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The original's generate_t2v and generate_i2v loops on dit/, from given latents and text embeddings.

    `encode_prompt` returns the stored embeddings and, for i2v, `prepare_latents` returns the given latents (frame 0
    is the clean condition latent), so no tokenizer, text encoder or VAE is involved; output_type "latent".
    """
    dit = original.dit_class.from_pretrained(out / "dit", torch_dtype=torch.float32).eval()
    for block in dit.blocks:
        block.attn.enable_flashattn2 = block.cross_attn.enable_flashattn2 = True
    pipe.dit = dit
    t = {"sample.latents0": torch.randn(1, 16, 3, 8, 12, generator=g),
         "sample.cond": torch.randn(1, 1, 12, 64, generator=g), "sample.cond_mask": text_mask([10], 12),
         "sample.uncond": torch.randn(1, 1, 12, 64, generator=g), "sample.uncond_mask": text_mask([5], 12)}

    def stored_prompt(do_classifier_free_guidance=True, **_):
        if do_classifier_free_guidance:
            return t["sample.cond"], t["sample.cond_mask"], t["sample.uncond"], t["sample.uncond_mask"]
        return t["sample.cond"], t["sample.cond_mask"], None, None

    pipe.encode_prompt = stored_prompt
    pipe.prepare_latents = lambda latents=None, **_: latents.clone()
    _, _, frames, height, width = t["sample.latents0"].shape
    size = dict(num_frames=1 + 4 * (frames - 1), num_inference_steps=4, output_type="latent")
    t["sample.t2v_cfg4_4steps"] = pipe.generate_t2v(prompt="fixture", height=8 * height, width=8 * width, guidance_scale=4.0,
                                                    latents=t["sample.latents0"].clone(), **size)
    from PIL import Image

    t["sample.i2v_4steps"] = pipe.generate_i2v(image=Image.new("RGB", (8 * width, 8 * height)), prompt="fixture",
                                               guidance_scale=1.0, latents=t["sample.latents0"].clone(), **size)
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="checkout of meituan-longcat/LongCat-Video")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the fixtures to")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts (default: all of {', '.join(PARTS)})")
    parser.add_argument("--hidden", type=int, default=256, help="DiT hidden size (4 heads; default 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    parts = {part for part in args.only.split(",") if part}
    if parts - set(PARTS):
        parser.error(f"unknown part(s) {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}")
    if "sample" in parts and "dit" not in parts and not (args.out / "dit" / "config.json").is_file():
        parser.error(f"part 'sample' runs on {args.out / 'dit'}, which does not exist: add 'dit' to --only")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)  # the modules' own initialisation
    generator = torch.Generator().manual_seed(args.seed)
    original = Original(args.original.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    if "dit" in parts:
        tensors = make_dit(original, args.out, args.hidden, generator)
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(args.out / "dit_cases.safetensors"))
    if "bsa" in parts:
        make_bsa_cases(original, args.out, generator)
    if parts & {"vae", "t5", "scheduler", "sample"}:
        make_pipeline_parts(original, args.out, parts, generator)
    log.info("wrote %s to %s", ", ".join(p for p in PARTS if p in parts), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
