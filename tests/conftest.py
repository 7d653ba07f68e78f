import os
import sys
from pathlib import Path

import pytest
import yaml

# Tests never touch the network: without HF_HUB_OFFLINE every hub miss retries for ~20 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # for `from launcher import ...` in test modules

from launcher import run_script, tiny_overlay  # noqa: E402

# Small on purpose: 24 train images (6 batches of 4), an odd number of test images (4 easy + 3 hard).
TINY_COUNTS = {
    ("train", None): 24,
    ("validation", "easy"): 3,
    ("validation", "hard"): 2,
    ("test", "easy"): 4,
    ("test", "hard"): 3,
}


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny SD3.5-layout model folder and synthetic Trans10k tree, built once per test session."""
    from demo.assets import build_demo_assets

    root = tmp_path_factory.mktemp("assets")
    folders = build_demo_assets(root, seed=0, counts=TINY_COUNTS, vae_fit_steps=2, vae_fit_batch_size=4)
    return {**folders, "cache": root / "cache"}


@pytest.fixture
def tiny_config(tiny_assets, tmp_path):
    """Write an overlay for the tiny assets (the real demo config, shrunk further) and return its path."""

    def write(**overrides) -> Path:
        config = tiny_overlay(tiny_assets, overrides.pop("output_dir", tmp_path / "run"), **overrides)
        path = tmp_path / f"overlay-{len(list(tmp_path.glob('overlay-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture(scope="session")
def run():
    """The launcher as a fixture, so module-scoped fixtures can train once and share the result."""
    return run_script
