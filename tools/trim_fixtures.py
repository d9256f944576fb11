"""Writes the repository's reference fixtures (tests/fixtures/longcat_ref) from the full shared set.

The full set (`../shared/fixtures/longcat_ref`, 35 MB, made by the original LongCat-Video code; see
tools/make_fixtures.py) is too large to ship: its `bsa_cases` alone are 25 MB. This script copies every
other file byte for byte and writes a smaller `bsa_cases` that still covers every case kind:

- `topk_0.875` is left out: `topk_0.9375` is the same kind (top-k, 4x4x4 chunks, q and k of one shape) and
  also covers a batch of two.
- every other case keeps its first attention head only. The original's gating (mean pooling, block scores,
  top-k or CDF) and its attention work on each (batch item, head) alone, so one head's q, k, v, output and
  block mask are a complete case of their own: the kept values are the original's, untouched.

The json entries are copied unchanged and the tensors keep their names and dtypes, so every reader of the
full set reads the trimmed one. Run from the repository root:

    python tools/trim_fixtures.py --source ../shared/fixtures/longcat_ref --dest tests/fixtures/longcat_ref
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import struct
from pathlib import Path

import numpy as np

log = logging.getLogger("trim_fixtures")

COPIED = ("dit", "vae", "text_encoder", "lora_rank8.safetensors", "dit_cases.json", "dit_cases.safetensors",
          "pipeline_cases.json", "pipeline_cases.safetensors")
LEFT_OUT_CASES = ("topk_0.875",)
KEPT_HEADS = 1  # heads kept per BSA case, from head 0
CASE_TENSORS = ("q", "k", "v", "out", "block_mask")  # each [B, H, ...]: heads on axis 1
# safetensors dtype name -> a numpy dtype of the same width (bytes are moved, never converted)
RAW_DTYPES = {"BF16": np.uint16, "F16": np.uint16, "F32": np.uint32, "F64": np.uint64, "U8": np.uint8,
              "I8": np.uint8, "I32": np.uint32, "I64": np.uint64, "BOOL": np.uint8}


def read_raw(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of a safetensors file as (dtype name, array of its raw bits in the stored shape)."""
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_size])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + header_size:]
    tensors = {}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        raw = np.frombuffer(body[start:end], dtype=RAW_DTYPES[entry["dtype"]])
        tensors[name] = (entry["dtype"], raw.reshape(entry["shape"]))
    return tensors


def write_raw(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """Writes (dtype name, raw-bit array) tensors as a safetensors file, in the given order."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, array) in tensors.items():
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw_header = json.dumps(header, separators=(",", ":")).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw_header)))
        f.write(raw_header)
        for blob in blobs:
            f.write(blob)


def trim_bsa_cases(source: Path, dest: Path) -> list[str]:
    """Writes dest/bsa_cases.{json,safetensors}: the kept cases, heads [0, KEPT_HEADS). Returns their names."""
    specs = json.loads((source / "bsa_cases.json").read_text())
    names = [spec["name"] for spec in specs]
    unknown = [name for name in LEFT_OUT_CASES if name not in names]
    if unknown:
        raise SystemExit(f"cases {unknown} to leave out are not in {source / 'bsa_cases.json'}; "
                         f"it lists {names}: update LEFT_OUT_CASES in {Path(__file__).name}")
    kept = [spec for spec in specs if spec["name"] not in LEFT_OUT_CASES]
    tensors = read_raw(source / "bsa_cases.safetensors")
    trimmed = {}
    for spec in kept:
        for key in CASE_TENSORS:
            dtype, array = tensors[f"{spec['name']}.{key}"]
            trimmed[f"{spec['name']}.{key}"] = (dtype, array[:, :KEPT_HEADS])  # [B, H, ...] -> [B, KEPT_HEADS, ...]
    write_raw(dest / "bsa_cases.safetensors", trimmed)
    (dest / "bsa_cases.json").write_text(json.dumps(kept, indent=1) + "\n")
    return [spec["name"] for spec in kept]


def copy_unchanged(source: Path, dest: Path) -> None:
    """Copies the DiT, VAE, UMT5, LoRA, DiT-case and pipeline-case files as they are."""
    for name in COPIED:
        src, dst = source / name, dest / name
        if not src.exists():
            raise SystemExit(f"{src} not found: --source must be a full longcat_ref fixture folder")
        for file in sorted(src.rglob("*")) if src.is_dir() else [src]:
            if file.is_file():
                target = dst / file.relative_to(src) if src.is_dir() else dst
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target)  # contents only: the source's read-only modes are not carried


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=root.parent / "shared" / "fixtures" / "longcat_ref",
                        help="the full fixture folder (default: ../shared/fixtures/longcat_ref)")
    parser.add_argument("--dest", type=Path, default=root / "tests" / "fixtures" / "longcat_ref",
                        help="where to write the trimmed set (default: tests/fixtures/longcat_ref)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.source / "bsa_cases.json").is_file():
        parser.error(f"{args.source} holds no bsa_cases.json: pass the full fixture folder with --source")
    if args.source.resolve() == args.dest.resolve():
        parser.error("--source and --dest are the same folder; the trimmed set must be written elsewhere")
    args.dest.mkdir(parents=True, exist_ok=True)
    copy_unchanged(args.source, args.dest)
    kept = trim_bsa_cases(args.source, args.dest)
    log.info("bsa_cases: kept %s (first %d head(s) of each), left out %s", ", ".join(kept), KEPT_HEADS,
             ", ".join(LEFT_OUT_CASES))
    log.info("%s: %.1f MB (source %.1f MB)", args.dest, folder_size(args.dest) / 1e6, folder_size(args.source) / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
