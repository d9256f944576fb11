"""`--lora PATH[:MULTIPLIER]`: a multiplier that is not a number is refused as such (not as a missing file), unless
the colon belongs to the path: a file of that whole name, or a folder whose name holds a colon."""

import pytest

from longcat_jax import generate
from longcat_jax.errors import InputError, LongCatError
from longcat_jax.models.dit.lora import parse_lora_spec
from longcat_jax.pipelines import tasks


def test_a_multiplier_that_is_not_a_number_is_named(tmp_path):
    with pytest.raises(InputError, match=r"--lora foo:abc: the multiplier 'abc' is not a number; write "
                                         r"PATH:MULTIPLIER, e\.g\. foo:0\.8"):
        parse_lora_spec("foo:abc")
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    with pytest.raises(InputError, match="the multiplier '0,8' is not a number"):
        parse_lora_spec(f"{lora}:0,8")


def test_a_colon_that_belongs_to_the_path_is_kept(tmp_path):
    named = tmp_path / "style:v2"  # a file literally named with a colon
    named.write_bytes(b"")
    assert parse_lora_spec(str(named)) == (named, 1.0)
    assert parse_lora_spec(f"{named}:0.5") == (named, 0.5)
    with pytest.raises(InputError, match=r"LoRA .*run:1/style\.safetensors not found"):  # a folder named 'run:1'
        parse_lora_spec(str(tmp_path / "run:1" / "style.safetensors"))


def test_a_file_that_is_no_lora_is_refused_while_planning_the_builtin_model(tmp_path):
    not_lora = tmp_path / "picture.png"
    not_lora.write_bytes(b"not a safetensors file")
    with pytest.raises(LongCatError, match="picture.png is not a readable safetensors file"):
        tasks.plan_run(generate.parse_request(["--lora", str(not_lora), "--output-path", str(tmp_path / "o.mp4")]))
