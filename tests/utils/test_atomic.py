import json
import threading

import pytest

from utils.atomic import atomic_path, atomic_write_json, atomic_write_text, replace_dir, temporary_sibling


def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    atomic_write_json(path, {"iou": 0.5})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"iou": 0.')  # killed half-way: an exception stands in for the kill
        raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"iou": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_json_refuses_nan_before_touching_the_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old\n")
    with pytest.raises(ValueError):
        atomic_write_json(path, {"iou": float("nan")})
    assert path.read_text() == "old\n"


def test_temporaries_differ_between_threads(tmp_path):
    names = []
    thread = threading.Thread(target=lambda: names.append(temporary_sibling(tmp_path / "a.png")))
    thread.start()
    thread.join()
    assert names[0] != temporary_sibling(tmp_path / "a.png")


def test_replace_dir_swaps_in_the_complete_folder(tmp_path):
    target, new = tmp_path / "transformer", tmp_path / "new"
    target.mkdir()
    (target / "weights").write_text("old")
    new.mkdir()
    (new / "weights").write_text("new")
    replace_dir(new, target)
    assert (target / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transformer"]
