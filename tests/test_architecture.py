"""The import directions the README's Layout section promises, checked on every import statement.

Arrows point down: CLI -> task registry and pipelines -> models -> `longcat_jax.checkpoint` and `kernels`.
Function-level (lazy) imports count the same as module-level ones: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("longcat_jax", "kernels", "convert", "tests", "benchmarks", "examples")

# (importer prefix, forbidden imported prefix, why)
RULES = [
    ("kernels", "longcat_jax", "kernels/ stands alone: it imports nothing from longcat_jax"),
    ("kernels", "convert", "kernels/ stands alone"),
    ("longcat_jax.checkpoint", "longcat_jax.models", "checkpoint reading sits below the models"),
    ("longcat_jax.checkpoint", "longcat_jax.pipelines", "checkpoint reading sits below the pipelines"),
    ("longcat_jax.models", "longcat_jax.pipelines", "models sit below the pipelines"),
    ("longcat_jax.models", "longcat_jax.generate", "models sit below the CLI"),
    ("longcat_jax.models", "longcat_jax.presets", "models do not know the built-in model's presets"),
    ("longcat_jax.pipelines", "longcat_jax.generate", "pipelines sit below the CLI"),
    ("longcat_jax", "convert", "convert/ is the conversion tool beside the CLI; nothing below imports it"),
    ("longcat_jax", "benchmarks", "nothing imports benchmarks/"),
    ("kernels", "benchmarks", "nothing imports benchmarks/"),
    ("convert", "benchmarks", "nothing imports benchmarks/"),
    ("tests", "benchmarks", "nothing imports benchmarks/"),
    ("examples", "benchmarks", "nothing imports benchmarks/"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations() -> list[str]:
    problems = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module_name(path)
            for line, imported in _imports(path, module):
                for importer, forbidden, why in RULES:
                    if _within(module, importer) and _within(imported, forbidden) and not _within(module, forbidden):
                        problems.append(f"{path.relative_to(ROOT)}:{line} imports {imported} ({why})")
    return sorted(set(problems))


def test_import_directions_hold():
    problems = _violations()
    assert not problems, "forbidden import directions:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("kernels.api", "from longcat_jax.errors import X\n", "kernels/ stands alone"),
        ("longcat_jax.checkpoint.safetensors", "import longcat_jax.models.dit\n", "below the models"),
        ("longcat_jax.models.dit.loading", "def f():\n    from convert import api\n", "conversion tool"),
        ("longcat_jax.pipelines.t2v", "from benchmarks import x\n", "nothing imports benchmarks"),
    ],
)
def test_the_checker_catches_each_kind_of_violation(tmp_path, monkeypatch, module, source, expected):
    """The walk itself works: a planted forbidden import (module-level or lazy) is reported."""
    fake_root = tmp_path
    path = fake_root.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True)
    path.write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", fake_root)
    problems = _violations()
    assert any(expected in problem for problem in problems), problems
