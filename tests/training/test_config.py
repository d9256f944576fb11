"""The training config: the example parses, defaults are filled, and every bad key or value is refused by name."""

import json
from pathlib import Path

import pytest

from longcat_jax.errors import ConfigError
from longcat_jax.training.config import BLOCK_LINEARS, load_train_config, parse_train_config

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "train" / "example.json"


def _config(**sections):
    return {"data": {"folder": "clips"}, **sections}


def test_the_example_config_parses_with_its_documented_values():
    config = load_train_config(EXAMPLE)
    assert config.model_path == Path("LongCat-Video")
    assert config.data.num_frames == 93 and config.data.resolution == "480p" and config.data.fps == 15.0
    assert config.lora.rank == 128 and config.lora.alpha == 64.0
    assert config.lora.modules == BLOCK_LINEARS[:8]  # attention + ffn
    assert config.task.name == "t2v" and config.bsa is None and config.bsa_backend == "auto"
    assert config.bsa_backward == "auto"
    assert config.cache_dir == Path("outputs/train/cache")


def test_a_minimal_config_takes_the_defaults():
    config = parse_train_config(_config())
    assert config.builtin and config.dtype == "bfloat16"
    assert (config.training.steps, config.training.batch_size, config.training.grad_accumulation) == (1000, 1, 1)
    assert config.optimizer.learning_rate == 1e-4 and config.optimizer.max_grad_norm == 1.0
    assert config.task.cond_video_frames() == 0
    assert config.quantize == "none" and not config.sample.enabled  # bf16 base, no sample videos


def test_a_quantized_base_and_sample_videos():
    config = parse_train_config(_config(quantize="int8", sample={"every": 100, "prompt": "a cat", "seed": 5,
                                                                 "height": 64, "width": 96, "num_frames": 9}))
    assert config.quantize == "int8"
    assert config.sample.enabled and config.sample.prompt == "a cat" and config.sample.seed == 5
    assert (config.sample.height, config.sample.width, config.sample.num_frames) == (64, 96, 9)
    assert config.sample.num_inference_steps is None and config.sample.guidance_scale is None  # generation's
    assert parse_train_config(_config(quantize="fp8")).quantize == "fp8"


def test_conditioned_tasks_and_bsa_settings():
    config = parse_train_config(_config(
        task={"name": "continuation", "num_cond_frames": 5},
        bsa={"enable_bsa": True, "backend": "reference",
             "bsa_params": {"sparsity": 0.5, "cdf_threshold": None, "chunk_3d_shape_q": [1, 4, 4],
                            "chunk_3d_shape_k": [1, 4, 4]}},
    ))
    assert config.task.cond_video_frames() == 5
    assert config.bsa.sparsity == 0.5 and config.bsa.chunk_3d_shape_q == (1, 4, 4)
    assert config.bsa_backend == "reference"
    assert parse_train_config(_config(task={"name": "i2v"})).task.cond_video_frames() == 1


def test_the_bsa_backward_kernels():
    chunks = {"sparsity": 0.5, "cdf_threshold": None, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]}
    assert parse_train_config(_config(bsa={"enable_bsa": True, "bsa_params": chunks})).bsa_backward == "auto"
    mosaic = parse_train_config(_config(bsa={"enable_bsa": True, "backend": "pallas", "backward": "mosaic",
                                             "bsa_params": chunks}))
    assert mosaic.bsa_backward == "mosaic" and mosaic.bsa_backend == "pallas" and mosaic.bsa.chunk_size_q == 64
    assert parse_train_config(_config(bsa={"enable_bsa": False, "backward": "mosaic"})).bsa_backward == "mosaic"
    # what the Mosaic GPU backward cannot run (bf16 and 64-token chunks only) is refused before any model loads
    for raw in (_config(dtype="float32", bsa={"enable_bsa": True, "backward": "mosaic", "bsa_params": chunks}),
                _config(bsa={"enable_bsa": True, "backward": "mosaic",
                             "bsa_params": {**chunks, "chunk_3d_shape_k": [1, 4, 4]}})):
        with pytest.raises(ConfigError, match="'bsa.backward' must be 'auto' or 'triton' unless dtype is bfloat16"):
            parse_train_config(raw)


def test_null_means_off_or_all_where_documented():
    config = parse_train_config(_config(data={"folder": "clips", "fps": None}, optimizer={"max_grad_norm": None},
                                        parallel={"devices": None}))
    assert config.data.fps is None and config.optimizer.max_grad_norm is None and config.parallel.devices is None


def test_remat_modes_and_the_boolean_of_earlier_configs():
    assert parse_train_config(_config()).training.remat == "block"
    for mode in ("block_keep_attention", "block", "block_and_sublayers", "none"):
        assert parse_train_config(_config(training={"remat": mode})).training.remat == mode
    assert parse_train_config(_config(training={"remat": True})).training.remat == "block"
    assert parse_train_config(_config(training={"remat": False})).training.remat == "none"


def test_comment_keys_are_ignored():
    config = parse_train_config({"_doc": "x", "data": {"folder": "clips", "_why": "y"}, "lora": {"_n": 1}})
    assert config.data.folder == Path("clips")


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"data": {"folder": "clips"}, "learning_rate": 1e-4}, "'learning_rate'"),
        (_config(optimizer={"lr": 1e-4}), "'optimizer.lr'"),
        (_config(training={"stpes": 10}), "'training.stpes'"),
        ({"data": {"folder": "clips", "frames": 93}}, "'data.frames'"),
        (_config(bsa={"enable_bsa": True, "bsa_params": {"sparsity": 0.5, "chunks": 4}}), "bsa_params.chunks"),
        ({}, "'data.folder'"),
    ],
)
def test_unknown_and_missing_keys_are_named(raw, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("'", "'?")):
        parse_train_config(raw)


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"data": {"folder": "clips", "num_frames": 94}}, "data.num_frames"),
        ({"data": {"folder": "clips", "height": 480}}, "data.height"),
        ({"data": {"folder": "clips", "height": 100, "width": 832}}, "data.height"),
        ({"data": {"folder": "clips", "resolution": "1080p"}}, "data.resolution"),
        ({"data": {"folder": "clips", "fps": 0}}, "data.fps"),
        ({"optimizer": {"learning_rate": -1}}, "optimizer.learning_rate"),
        ({"optimizer": {"schedule": "step"}}, "optimizer.schedule"),
        ({"optimizer": {"warmup_steps": 2000}}, "optimizer.warmup_steps"),
        ({"training": {"steps": 0}}, "training.steps"),
        ({"training": {"batch_size": True}}, "training.batch_size"),
        ({"training": {"remat": "yes"}}, "training.remat"),
        ({"training": {"sigma_sampling": "beta"}}, "training.sigma_sampling"),
        ({"lora": {"rank": 0}}, "lora.rank"),
        ({"lora": {"targets": ["attn.q"]}}, "lora.targets"),
        ({"lora": {"targets": []}}, "lora.targets"),
        ({"task": {"name": "refine"}}, "task.name"),
        ({"task": {"name": "t2v", "num_cond_frames": 5}}, "task.num_cond_frames"),
        ({"task": {"name": "continuation", "num_cond_frames": 93}}, "task.num_cond_frames"),
        ({"task": {"name": "continuation", "num_cond_frames": 6}}, "task.num_cond_frames"),
        ({"bsa": {"enable_bsa": True}}, "bsa_params"),
        ({"bsa": {"enable_bsa": False, "backend": "cuda"}}, "bsa.backend"),
        ({"bsa": {"enable_bsa": False, "backward": "cutlass"}}, "bsa.backward"),
        ({"parallel": {"devices": 2}}, "training.batch_size"),
        ({"dtype": "float16"}, "dtype"),
        ({"checkpoint": {"every": -5}}, "checkpoint.every"),
        ({"quantize": "int4"}, "quantize"),
        ({"quantize": True}, "quantize"),
        ({"training": {"seed": 2**63}}, "training.seed"),
        ({"sample": {"every": 10}}, "sample.prompt"),
        ({"sample": {"every": 10, "prompt": "  "}}, "sample.prompt"),
        ({"sample": {"every": -1}}, "sample.every"),
        ({"sample": {"prompt": 5}}, "sample.prompt"),
        ({"sample": {"height": 64}}, "sample.height"),
        ({"sample": {"height": 60, "width": 64}}, "sample.height"),
        ({"sample": {"num_frames": 8}}, "sample.num_frames"),
        ({"sample": {"guidance_scale": 0.5}}, "sample.guidance_scale"),
        ({"sample": {"num_inference_steps": 0}}, "sample.num_inference_steps"),
        ({"sample": {"every": 5, "prompt": "a cat"}, "parallel": {"devices": None}}, "sample.every"),
        ({"sample": {"steps": 5}}, "sample.steps"),
    ],
)
def test_bad_values_are_refused_by_key(sections, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_train_config({**_config(), **sections})


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"data": {"folder": "clips"}, "optimizer": {"learning_rate": "fast"}}))
    with pytest.raises(ConfigError, match=r"train\.json.*optimizer\.learning_rate"):
        load_train_config(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="example.json"):
        load_train_config(tmp_path / "missing.json")
