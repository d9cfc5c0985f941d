"""Data-parallel training under torchrun: 2 CPU processes on gloo equal one process with 2x batch."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from gptlab.cli import DUMP_WEIGHTS_ENV, build_run, load_run_config
from gptlab.train import load_checkpoint, train

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch build has no gloo backend",
)

PER_RANK_BATCH = 2


def write_run(tmp: pathlib.Path, batch_size: int, out_dir: pathlib.Path) -> pathlib.Path:
    words = [
        "the",
        "king",
        "queen",
        "sword",
        "crown",
        "night",
        "day",
        "love",
        "death",
        "war",
        "peace",
    ]
    g = torch.Generator().manual_seed(0)
    lines = [
        " ".join(words[int(i)] for i in torch.randint(len(words), (8,), generator=g))
        for _ in range(200)
    ]
    (tmp / "tiny.txt").write_text("\n".join(lines), encoding="utf-8")
    config = tmp / f"run_b{batch_size}.toml"
    config.write_text(
        f"""
out_dir = "{out_dir.as_posix()}"
[model]
n_layer = 1
n_head = 2
n_embd = 32
block_size = 16
bias = false  # a key bias gets a zero gradient that Adam would turn into noise-driven steps
[data]
text_file = "{(tmp / "tiny.txt").as_posix()}"
tokenizer = "char"
[train]
batch_size = {batch_size}
grad_accum_steps = 2
max_steps = 3
warmup_steps = 1
lr = 1e-3  # Adam divides by sqrt(v): tiny float differences in tiny gradients become ~lr-sized
eval_interval = 0
progress = false
device = "cpu"
""",
        encoding="utf-8",
    )
    return config


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_twice_the_batch(tmp_path):
    config = write_run(tmp_path, PER_RANK_BATCH, tmp_path / "ddp_out")
    dump = tmp_path / "dump"
    env = {**os.environ, DUMP_WEIGHTS_ENV: str(dump), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "gptlab", "train", "--config", str(config)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("trained to step 3") == 1  # only rank 0 reports

    rank0, rank1 = load_file(dump / "rank0.safetensors"), load_file(dump / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for name in rank0:  # gradients are all-reduced, so every rank takes the very same steps
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"

    ckpt = load_checkpoint(tmp_path / "ddp_out")  # written by rank 0 only, with both ranks' RNG
    assert ckpt.step == 3
    assert len(ckpt.training_state["rng"]["ranks"]) == 2

    # One process, global batch = 2 ranks x PER_RANK_BATCH: rank r trained on rows
    # [r*B, (r+1)*B) of exactly this batch, and DDP averages the two gradients.
    single_cfg = load_run_config(write_run(tmp_path, 2 * PER_RANK_BATCH, tmp_path / "single_out"))
    run = build_run(single_cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = train(run.model, run.train_ids, run.val_ids, run.train_config)
    finally:
        torch.set_num_threads(threads)
    single = {k: v for k, v in run.model.state_dict().items() if k in rank0}
    assert single.keys() == rank0.keys()
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], value, rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(ckpt.history.train_loss, history.train_loss, rtol=1e-6, atol=1e-6)
    # the weights did move: the comparison is not between two untouched initialisations
    initial = build_run(single_cfg).model.state_dict()
    assert max(float((initial[k] - v).abs().max()) for k, v in single.items()) > 1e-3
