"""train.sh, the main job, as `docker run IMAGE train.sh ...` and as `./train.sh ...` call it."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO


@pytest.mark.parametrize("prefix", [[], ["train.sh"]])
def test_usage_error_is_one_line(prefix):
    run = subprocess.run([str(REPO / "train.sh"), *prefix, "--dataset", "mnist"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr == "train.sh: error: unknown dataset 'mnist' (cub, cars, sop, inshop or digits)\n"


def test_docker_style_run_end_to_end(tmp_path):
    """The image's entry point gets its own name first; a tiny offline digits run goes through."""
    name = f"pytest-train-sh-{os.getpid()}"
    run_dir = REPO / "runs" / name
    env = dict(os.environ, ABE_DATA=str(tmp_path))
    try:
        run = subprocess.run(
            [str(REPO / "train.sh"), "train.sh", "--dataset", "digits", "--name", name, "--size", "40",
             "--from-scratch", "--M", "2", "--embed-dim", "16", "--crop", "32", "--batch", "16",
             "--max-iter", "4", "--eval-every", "2", "--snapshot-every", "2"],
            env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        recall = json.loads((run_dir / "recall.json").read_text())
        assert set(recall["recall"]) == {"1", "2", "4", "8"}
        assert all(0.0 <= v <= 1.0 for v in recall["recall"].values())
        for produced in ("history.csv", "curves.png", "self_pairs.png", "attention.png",
                         "features.npz", "retrievals.png", "retrievals_learners.png",
                         "embedding_map.png"):
            assert (run_dir / produced).stat().st_size > 0, produced
        assert (tmp_path / "lmdb" / "digits" / "train_lmdb").is_dir()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
