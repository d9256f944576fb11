"""LoRA fine-tuning of LongCat-Video: `python -m longcat_jax.train --config train.json [--prepare] [--resume]`.

    config.py          the JSON config, validated key by key
    dataset.py         the data folder: videos with captions (name.mp4 + name.txt, or metadata.jsonl)
    prepare.py         `--prepare`: VAE latents and UMT5 embeddings of every clip, once, into the cache (cache.py)
    shapes.py          buckets, latent and token grids, BSA tiling checks
    objective.py       the flow-matching loss in our sampler's convention (derivation in its docstring)
    models.py          the frozen base DiT (bf16, or its block Linears FP8/INT8 with `quantize`) and the encoders
    trainable_lora.py  float32 LoRA factors on the frozen DiT; lora_file.py writes them in the original format
    remat.py           per-block rematerialisation
    optimizer.py       AdamW and the learning-rate schedules; step.py the compiled step
    placement.py       one device or a data-parallel / FSDP mesh
    batches.py         the deterministic order of clips; checkpoints.py Orbax state; run_log.py CSV/TensorBoard
    sample_video.py    the optional sample video every N steps (fixed prompt and seed, generation's functions)
    loop.py            the run
"""
