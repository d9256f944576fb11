"""Peak resident memory of `convert_checkpoint` on a synthetic multi-GB original DiT checkpoint.

Usage (from the repository root): PYTHONPATH=. python benchmarks/convert_memory.py WORKDIR [--depth 18]
Writes WORKDIR/src (bf16 random DiT, hidden 2048, 4 shards), converts it in a fresh subprocess and prints
the peak RSS (VmHWM), the RSS after the imports and a warm-up conversion, and the checkpoint's size.
WORKDIR is deleted at the end.
"""

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers.dit_checkpoints import dit_config, write_original_dit  # noqa: E402

PROBE = textwrap.dedent("""
    import json, sys, time
    from convert.api import convert_checkpoint
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    def convert(src, dst):  # the API before and after the change
        if "allow_incomplete" in convert_checkpoint.__code__.co_varnames:
            convert_checkpoint(src, dst, allow_incomplete=True, progress=False)
        else:
            convert_checkpoint(src, dst)
    work = sys.argv[1]
    convert(work + "/warm", work + "/out_warm")
    base = status("VmRSS")
    start = time.perf_counter()
    convert(work + "/src", work + "/out")
    seconds = time.perf_counter() - start
    print(json.dumps({"base_rss": base, "peak_rss": status("VmHWM"), "seconds": seconds}))
""")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("--depth", type=int, default=18)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True)
    try:
        config = dit_config(hidden_size=2048, depth=args.depth, num_heads=16)
        tensors = write_original_dit(work / "src" / "dit", config, num_shards=4)
        size = sum(a.nbytes for a in tensors.values())
        block = sum(a.nbytes for n, a in tensors.items() if n.startswith("blocks.0."))
        del tensors
        write_original_dit(work / "warm" / "dit", dit_config(hidden_size=2048, depth=1, num_heads=16))
        out = subprocess.run([sys.executable, "-c", PROBE, str(work)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        gib = 2**30
        print(f"checkpoint {size / gib:.2f} GiB, one block {block / gib:.3f} GiB; RSS after warm-up "
              f"{result['base_rss'] / gib:.2f} GiB, peak RSS {result['peak_rss'] / gib:.2f} GiB "
              f"(+{(result['peak_rss'] - result['base_rss']) / gib:.2f} GiB); conversion {result['seconds']:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
