import shutil
import subprocess
import sys
from pathlib import Path

from dataset import check

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_check(*args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dataset.check", *map(str, args)]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_every_kind_of_problem_is_reported_at_once(tree: Path, write_mask) -> None:
    image_without_mask = tree / "train" / "images" / "tr0.jpg"
    (tree / "train" / "masks" / "tr0_mask.png").unlink()
    corrupt = tree / "validation" / "easy" / "images" / "vaeasy1.jpg"
    corrupt.write_bytes(b"not a JPEG at all")
    rotated_mask = write_mask(tree / "validation" / "hard" / "masks" / "vahard0_mask.png", size=(30, 40))
    shutil.rmtree(tree / "test")

    result = run_check(tree)

    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "4 problem(s)" in out
    assert f"image without mask: {image_without_mask}" in out
    assert f"cannot read image {corrupt}" in out
    assert f"mask {rotated_mask} is 30x40" in out and "rotated pair?" in out
    assert f"missing split folder {tree / 'test'}" in out
    assert "Expected Trans10k layout" in out
    # Counts of the pairs that were found, against the official sizes (informational).
    assert "train       -              1      5000       -4999" in out
    assert "validation  total          4      1000        -996" in out
    assert "test        total          0      4428       -4428" in out
    assert result.stderr == ""


def test_clean_tree_passes_with_counts(tree: Path) -> None:
    result = run_check(tree, "--deep")

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "No problems found." in out and "problem(s)" not in out
    assert "train       -              2      5000       -4998" in out
    assert "validation  easy           2" in out and "test        hard           2" in out
    assert "test        total          4      4428       -4424" in out


def test_truncated_image_fails_only_the_deep_check(tree: Path, capsys) -> None:
    image_path = tree / "test" / "hard" / "images" / "tehard1.jpg"
    image_path.write_bytes(image_path.read_bytes()[:-200])

    assert check.main([str(tree), "--splits", "test"]) == 0
    capsys.readouterr()
    assert check.main([str(tree), "--splits", "test", "--deep"]) == 1
    out = capsys.readouterr().out
    assert str(image_path) in out
    assert "train" not in out.split("pairs found")[1]  # only the requested split is counted


def test_missing_dataset_folder_is_a_problem_not_a_crash(tmp_path: Path, capsys) -> None:
    assert check.main([str(tmp_path / "nowhere")]) == 1
    assert f"dataset folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().out
