"""examples/bsa_usage.py on the built-in model: example 5 (the adaptive CDF report, no VAE) runs and reports
one row per DiT layer with a block count within the possible range."""

import argparse
import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "bsa_usage.py"


def test_example_5_reports_kept_blocks_per_layer(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("bsa_usage", EXAMPLES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.example_5_adaptive(argparse.Namespace(model_path=None, steps=1, output_dir=tmp_path))
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert [row[0] for row in rows] == ["0", "1"]  # the tiny DiT has two blocks
    for _, kept, total, _density in rows:
        assert 1.0 <= float(kept) <= int(total)
