"""`xrouter train` under torchrun: two CPU processes (gloo) roll out their own prompts, average
gradients, and end with the same weights; rank 0 writes the checkpoint."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from xrouter.router.checkpoint_manifest import MANIFEST
from xrouter.router.compact.checkpoint import read_manifest

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "training" / "configs"


def train_with_two_processes(config: str, out: pathlib.Path, timeout_s: int) -> None:
    """`xrouter train` under torchrun with 2 CPU processes; it must succeed with identical replicas."""
    bin_dir = pathlib.Path(sys.executable).parent
    command = [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node=2", "--no-python",
               str(bin_dir / "xrouter"), "train", "--config", str(CONFIGS / config), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "weights identical on all 2 processes" in done.stdout


def test_torchrun_two_processes_train_one_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    train_with_two_processes("tiny.yaml", tmp_path, timeout_s=300)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]  # one log, written by rank 0
    manifest = read_manifest(tmp_path / "checkpoint")
    assert manifest["config"]["steps"] == 3


def test_torchrun_two_processes_train_the_lm_policy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The LM policy's GRPO under torchrun: each rank rolls out its own prompts, token gradients are
    summed over both, the replicas end identical and rank 0 alone logs and saves."""
    train_with_two_processes("lm-tiny.yaml", tmp_path, timeout_s=600)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # one log, written by rank 0
    # both ranks' episodes in the log: 2 processes × 2 prompts per step × groups of 2
    assert all(m["processes"] == 2 and m["episodes"] == 8 for m in metrics)
    manifest = json.loads((tmp_path / "checkpoint" / MANIFEST).read_text())
    assert manifest["config"]["steps"] == 2
