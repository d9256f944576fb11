"""Parity checks against reference outputs of the original PyTorch LongCat-Video (`python -m longcat_jax.parity`).

Each group is a module `longcat_jax.parity.<group>` with `run(fixtures: Path, dtype: str) -> list[CaseResult]`.
"""
