import json
import os
import shutil

import pytest

from utils.checkpointing import (
    BEST,
    BEST_MARKER,
    MARKER,
    best_record,
    complete_checkpoints,
    recover_interrupted_save,
    resolve_resume_path,
    save_best_checkpoint,
    save_checkpoint,
)


def fake_save_state(step: int):
    """Stands in for accelerator.save_state: two files, so a kill can fall between them."""

    def save_state(path: str) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "model.safetensors"), "w") as f:
            f.write(f"weights {step}")
        with open(os.path.join(path, "optimizer.bin"), "w") as f:
            f.write(f"optimizer {step}")

    return save_state


def write_checkpoint(output_dir, step: int, keep: int = 0) -> None:
    save_checkpoint(fake_save_state(step), output_dir, step, {"epoch": 0}, keep, is_main=True, barrier=lambda: None)


def assert_intact(output_dir) -> list[int]:
    """Every complete checkpoint holds both files of its own step; returns the steps."""
    steps = []
    for path in complete_checkpoints(output_dir):
        step = json.loads((path / MARKER).read_text())["step"]
        assert (path / "model.safetensors").read_text() == f"weights {step}"
        assert (path / "optimizer.bin").read_text() == f"optimizer {step}"
        steps.append(step)
    return steps


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
        write_checkpoint(tmp_path, step, keep=limit)
    assert [p.name for p in complete_checkpoints(tmp_path)] == expected
    assert not list(tmp_path.glob(".checkpoint-*"))


def test_prune_never_deletes_before_the_new_checkpoint_is_complete(tmp_path):
    write_checkpoint(tmp_path, 1, keep=1)

    def save_state_that_sees_the_old_checkpoint(path: str) -> None:
        assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-1"]
        fake_save_state(2)(path)

    save_checkpoint(save_state_that_sees_the_old_checkpoint, tmp_path, 2, {}, 1, True, lambda: None)
    assert assert_intact(tmp_path) == [2]


class Killed(BaseException):
    """A SIGKILL at this instant: nothing after it runs (BaseException: no `except Exception` catches it)."""


def kill_at_operation(monkeypatch, kill_index: int) -> dict:
    """Make the `kill_index`-th filesystem mutation (file write, rename, replace, tree removal) the last one.

    A tree removal that is hit deletes one file first, as a kill in the middle of `rmtree` would.
    """
    state = {"count": 0}

    def guarded(real, partial=None):
        def wrapper(*args, **kwargs):
            state["count"] += 1
            if state["count"] == kill_index:
                if partial:
                    partial(*args)
                raise Killed
            return real(*args, **kwargs)

        return wrapper

    def delete_one_file(path, *_):
        for root, _dirs, files in os.walk(path):
            if files:
                os.remove(os.path.join(root, files[0]))
                return

    real_open = open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax"):
            return guarded(real_open)(file, mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "rename", guarded(os.rename))
    monkeypatch.setattr(os, "replace", guarded(os.replace))
    monkeypatch.setattr(shutil, "rmtree", guarded(shutil.rmtree, delete_one_file))
    monkeypatch.setattr("builtins.open", guarded_open)
    return state


def prepare(output_dir, steps):
    output_dir.mkdir()
    for step in steps:
        write_checkpoint(output_dir, step)


@pytest.mark.parametrize(
    "existing, save_step, limit",
    [
        ([1], 2, 1),
        ([1, 2], 3, 2),
        ([1, 2], 2, 2),  # a step that exists: resumed from checkpoint-1, saving step 2 again
        ([1, 2], 3, 1),  # the limit lowered between runs
    ],
)
def test_a_kill_at_any_instant_of_a_save_loses_no_checkpoint(tmp_path, existing, save_step, limit):
    prepare(tmp_path / "count", existing)
    with pytest.MonkeyPatch.context() as monkeypatch:
        operations = kill_at_operation(monkeypatch, kill_index=-1)
        write_checkpoint(tmp_path / "count", save_step, keep=limit)
    assert operations["count"] >= 5
    for kill_index in range(1, operations["count"] + 1):
        output_dir = tmp_path / f"kill-{kill_index}"
        prepare(output_dir, existing)
        with pytest.MonkeyPatch.context() as monkeypatch:
            kill_at_operation(monkeypatch, kill_index)
            with pytest.raises(Killed):
                write_checkpoint(output_dir, save_step, keep=limit)
        # At least as many complete checkpoints as before the save (as many as the limit allows, when it was lowered).
        floor = min(len(existing), limit)
        survivors = assert_intact(output_dir)
        if save_step not in existing:  # a new step: that holds even before the next start-up
            assert len(survivors) >= floor, (kill_index, survivors)
        recover_interrupted_save(output_dir)  # what the next start-up does
        recovered = assert_intact(output_dir)
        assert len(recovered) >= floor, (kill_index, recovered)
        assert set(survivors) <= set(recovered)
        assert not list(output_dir.glob(".checkpoint-*")), kill_index
        write_checkpoint(output_dir, save_step, keep=limit)  # the resumed run saves the same step again
        assert assert_intact(output_dir)[-1] == save_step


def test_recovery_restores_a_complete_leftover_and_removes_the_rest(tmp_path):
    write_checkpoint(tmp_path, 4)
    os.rename(tmp_path / "checkpoint-4", tmp_path / ".checkpoint-4.tmp")  # killed between marker and rename
    (tmp_path / ".checkpoint-8.tmp").mkdir()  # killed while writing: no marker
    write_checkpoint(tmp_path, 2)
    os.rename(tmp_path / "checkpoint-2", tmp_path / ".checkpoint-2.deleting")  # killed while pruning
    actions = recover_interrupted_save(tmp_path)
    assert len(actions) == 3 and any("restored checkpoint-4" in a for a in actions)
    assert assert_intact(tmp_path) == [4]
    assert not list(tmp_path.glob(".checkpoint-*"))


def write_best(output_dir, step: int) -> None:
    def save_weights(folder) -> None:
        fake_save_state(step)(str(folder))

    save_best_checkpoint(save_weights, output_dir, {"step": step, "val/iou": step / 100}, True, lambda: None)


def assert_best_intact(output_dir) -> int | None:
    """checkpoint-best/ holds both files of the step its best.json names; returns that step."""
    record = best_record(output_dir)
    if record is None:
        assert not (output_dir / BEST).exists()
        return None
    assert (output_dir / BEST / "model.safetensors").read_text() == f"weights {record['step']}"
    assert (output_dir / BEST / "optimizer.bin").read_text() == f"optimizer {record['step']}"
    return record["step"]


def test_best_checkpoint_is_replaced_whole_and_is_not_a_resumable_checkpoint(tmp_path):
    write_checkpoint(tmp_path, 4)
    write_best(tmp_path, 3)
    write_best(tmp_path, 4)
    assert best_record(tmp_path) == {"step": 4, "val/iou": 0.04}
    assert assert_best_intact(tmp_path) == 4
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-4"]  # not counted, never pruned
    assert resolve_resume_path("latest", tmp_path) == tmp_path / "checkpoint-4"
    assert not list(tmp_path.glob(".checkpoint-*"))


def test_a_kill_at_any_instant_of_a_best_save_keeps_the_previous_best(tmp_path):
    (tmp_path / "count").mkdir()
    write_best(tmp_path / "count", 2)
    with pytest.MonkeyPatch.context() as monkeypatch:
        operations = kill_at_operation(monkeypatch, kill_index=-1)
        write_best(tmp_path / "count", 5)
    assert operations["count"] >= 5
    for kill_index in range(1, operations["count"] + 1):
        output_dir = tmp_path / f"kill-{kill_index}"
        output_dir.mkdir()
        write_best(output_dir, 2)
        with pytest.MonkeyPatch.context() as monkeypatch:
            kill_at_operation(monkeypatch, kill_index)
            with pytest.raises(Killed):
                write_best(output_dir, 5)
        recover_interrupted_save(output_dir)  # what the next start-up does
        assert assert_best_intact(output_dir) in (2, 5), kill_index  # the previous best, or the new one, whole
        assert not list(output_dir.glob(".checkpoint-*")), kill_index
        write_best(output_dir, 7)
        assert assert_best_intact(output_dir) == 7


def test_recovery_puts_back_a_best_caught_between_two_renames(tmp_path):
    write_best(tmp_path, 3)
    os.rename(tmp_path / BEST, tmp_path / ".checkpoint-best.old")  # killed after moving the old best aside
    (tmp_path / ".checkpoint-best.tmp").mkdir()  # the new one was not complete (no best.json)
    actions = recover_interrupted_save(tmp_path)
    assert any(f"restored {BEST}" in a for a in actions) and len(actions) == 2
    assert assert_best_intact(tmp_path) == 3 and (tmp_path / BEST / BEST_MARKER).is_file()
