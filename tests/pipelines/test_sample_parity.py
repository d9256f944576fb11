"""Parity group `sample`: our whole 4-step sampling loops against the original's, float32, from the fixtures."""

from longcat_jax.parity import sample


def test_sample_group_passes(fixtures_dir):
    results = sample.run(fixtures_dir, "float32")
    assert {r.name for r in results} == {"sample.t2v_cfg4_4steps", "sample.i2v_4steps"}
    for result in results:
        assert result.status == "PASS", result
        assert result.rel_l2 <= 1e-4
