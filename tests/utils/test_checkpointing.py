import json

import pytest

from utils.checkpointing import (
    MARKER,
    complete_checkpoints,
    prune_checkpoints,
    resolve_resume_path,
    save_checkpoint,
)


def write_checkpoint(output_dir, step: int) -> None:
    def save_state(path: str) -> None:
        (output_dir / path).mkdir(parents=True, exist_ok=True)
        (output_dir / path / "model.safetensors").write_text(f"weights {step}")

    save_checkpoint(save_state, output_dir, step, {"epoch": 0}, is_main=True, barrier=lambda: None)


def test_save_is_atomic_and_self_describing(tmp_path):
    write_checkpoint(tmp_path, 10)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-10"]
    assert json.loads((tmp_path / "checkpoint-10" / MARKER).read_text()) == {"step": 10, "epoch": 0}
    assert not list(tmp_path.glob(".checkpoint-*"))  # the temporary name is gone


def test_latest_ignores_half_written_checkpoints(tmp_path):
    write_checkpoint(tmp_path, 5)
    write_checkpoint(tmp_path, 20)
    (tmp_path / "checkpoint-30").mkdir()  # renamed but never finished (no marker): e.g. copied by hand
    (tmp_path / ".checkpoint-40.tmp").mkdir()  # killed while writing
    (tmp_path / "checkpoint-40.tmp").mkdir()
    assert resolve_resume_path("latest", tmp_path) == tmp_path / "checkpoint-20"
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-20"]  # numeric order


def test_latest_without_checkpoints_is_none_and_explicit_paths_must_be_complete(tmp_path):
    assert resolve_resume_path("latest", tmp_path) is None
    assert resolve_resume_path(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="checkpoint-7"):
        resolve_resume_path(str(tmp_path / "checkpoint-7"), tmp_path)
    (tmp_path / "checkpoint-8").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume_path("checkpoint-8", tmp_path)
    write_checkpoint(tmp_path, 9)
    assert resolve_resume_path("checkpoint-9", tmp_path) == tmp_path / "checkpoint-9"


@pytest.mark.parametrize(
    "limit, expected",
    [
        (1, ["checkpoint-4"]),
        (2, ["checkpoint-3", "checkpoint-4"]),
        (0, ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]),
    ],
)
def test_total_limit_keeps_exactly_n(tmp_path, limit, expected):
    for step in (1, 2, 3, 4):
        prune_checkpoints(tmp_path, limit)  # the trainer prunes just before each save
        write_checkpoint(tmp_path, step)
    assert [p.name for p in complete_checkpoints(tmp_path)] == expected
