"""The UMT5 encoder's hyper-parameters, read from the original `text_encoder/config.json`.

The checkpoint's config is a Hugging Face `UMT5Config` written by transformers; it carries many
keys that only matter for the decoder, for training or for transformers itself. Those are named
below and ignored; any other key is refused, so a config this code does not understand never
loads silently into a wrong model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from longcat_jax.errors import CheckpointError, ConfigError
from longcat_jax.json_io import read_json_object

# Keys of a transformers UMT5/T5 config that do not change the encoder's forward pass.
_IGNORED_KEYS = frozenset(
    {
        "_name_or_path",
        "_attn_implementation_autoset",
        "architectures",
        "bos_token_id",
        "classifier_dropout",
        "decoder_start_token_id",
        "dropout_rate",
        "dtype",
        "gradient_checkpointing",
        "initializer_factor",
        "is_encoder_decoder",
        "n_positions",
        "num_decoder_layers",
        "output_attentions",
        "output_hidden_states",
        "output_past",
        "return_dict",
        "scalable_attention",
        "tie_word_embeddings",
        "tokenizer_class",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "use_return_dict",
    }
)

# Checked for the one value this encoder implements, then dropped.
_FIXED_KEYS = {
    "model_type": "umt5",
    "is_decoder": False,
    "is_gated_act": True,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
}


@dataclasses.dataclass(frozen=True)
class UMT5Config:
    """Sizes of a UMT5 encoder: gated tanh-GELU FFN, a relative position bias in every layer."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    pad_token_id: int = 0
    eos_token_id: int = 1

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"UMT5 config: {name} must be a positive integer, got {value!r}")
        buckets = self.relative_attention_num_buckets
        if not isinstance(buckets, int) or buckets < 4 or buckets % 2:
            raise ConfigError(
                f"UMT5 config: relative_attention_num_buckets must be an even integer >= 4, got {buckets!r}"
            )
        if self.relative_attention_max_distance <= buckets // 4:
            raise ConfigError(
                "UMT5 config: relative_attention_max_distance must exceed relative_attention_num_buckets / 4, "
                f"got {self.relative_attention_max_distance}"
            )
        if not self.layer_norm_epsilon > 0:
            raise ConfigError(f"UMT5 config: layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")

    @property
    def inner_dim(self) -> int:
        """Width of the q, k, v projections: heads x head size."""
        return self.num_heads * self.d_kv

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> UMT5Config:
        """Parses a transformers UMT5 config dict, refusing unknown keys and unsupported variants."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in raw.items():
            if key in fields:
                kwargs[key] = value
            elif key in _FIXED_KEYS:
                if value != _FIXED_KEYS[key]:
                    raise ConfigError(
                        f"{source}: {key} = {value!r} is not supported; this UMT5 encoder implements "
                        f"{key} = {_FIXED_KEYS[key]!r} (the umT5 / LongCat text encoder)"
                    )
            elif key not in _IGNORED_KEYS:
                raise ConfigError(f"{source}: unknown key {key!r}; is this the config of a UMT5 text encoder?")
        required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
        missing = [name for name in required if name not in kwargs]
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {missing}")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> UMT5Config:
        """Reads `config.json` of a `text_encoder/` folder (or the file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        raw = read_json_object(path, "text encoder config", missing_error=CheckpointError,
                               hint="the text_encoder/ folder needs its config.json")
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The config as transformers would write it, readable back by `from_dict`."""
        return {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", **dataclasses.asdict(self)}
