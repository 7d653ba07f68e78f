"""The one layering rule of the README's Layout section: imports run one way, from the entry scripts down.

utils (shared infrastructure) <- dataset <- models <- evaluation <- demo, bench, entry scripts.
A module may import its own package and the packages below it, never one above.
"""

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["utils", "dataset", "models", "evaluation"]  # bottom to top; everything else sits above them
OURS = {*LAYERS, "demo", "bench", "trainer", "val_inference", "predict", "export", "app"}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of this repo's modules that `path` imports (anywhere in the file, lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & OURS


@pytest.mark.parametrize("package", LAYERS)
def test_packages_import_only_their_own_layer_and_below(package):
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    offences = {
        str(path.relative_to(REPO_ROOT)): sorted(imported_packages(path) - allowed)
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }
    assert {path: bad for path, bad in offences.items() if bad} == {}


def test_the_rule_catches_an_upward_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from evaluation.metrics import summarize\n")
    assert imported_packages(module) == {"evaluation"}
