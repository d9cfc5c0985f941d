"""Checkpoints: files and tied weights, atomic saves, integrity, and never deleting user files."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from gptlab import checkpoint
from gptlab.checkpoint import (
    CheckpointError,
    History,
    find_checkpoint,
    load_checkpoint,
    load_model,
    load_tokenizer,
    prepare_checkpoint_dir,
    save_checkpoint,
)
from gptlab.cli import main
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizers import CharTokenizer
from gptlab.train import TrainConfig, configure_optimizer, train

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "to be or not to be, that is the question. " * 20


def tiny_model(seed: int = 0, n_embd: int = 32) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=n_embd))


def tiny_cfg(**overrides) -> TrainConfig:
    base = dict(
        batch_size=2, block_size=16, max_steps=3, warmup_steps=1, eval_interval=0,
        device="cpu", progress=False, seed=0,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def token_stream() -> torch.Tensor:
    return torch.randint(16, (200,), generator=torch.Generator().manual_seed(0))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


def full_checkpoint(path) -> GPT:
    """A checkpoint with weights, optimizer state and a tokenizer file."""
    model = tiny_model()
    tokenizer = CharTokenizer.from_text("abcdefghijklmnop")
    save_checkpoint(path, model, configure_optimizer(model, 1e-3, 0.1), step=1, tokenizer=tokenizer)
    return model


def tree(path) -> dict[str, bytes]:
    """Every file under ``path`` with its content: to prove nothing was changed or deleted."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------------- files
def test_checkpoint_files_and_tied_weights(tmp_path):
    model = tiny_model()
    opt = configure_optimizer(model, 1e-3, 0.1)
    history = History(steps=[1], train_loss=[2.5], lr=[1e-3], tokens_seen=[64], grad_norm=[0.3])
    save_checkpoint(
        tmp_path / "c", model, opt, step=1, train_config=tiny_cfg(), history=history,
        extra={"note": "hi"},
    )  # fmt: skip
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert files == ["meta.json", "model.safetensors", "optimizer.pt"]  # no marker left behind
    tensors = load_file(tmp_path / "c" / "model.safetensors")
    assert "lm_head.weight" not in tensors  # stored once ...
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["tied_weights"] == {"lm_head.weight": "transformer.wte.weight"}
    assert meta["model_config"] == model.config.to_dict()
    assert meta["train_config"]["batch_size"] == 2 and meta["extra"] == {"note": "hi"}
    assert meta["gptlab_version"] and meta["format_version"] == 2
    torch.load(tmp_path / "c" / "optimizer.pt", weights_only=True)  # plain tensors only
    loaded = load_model(tmp_path / "c")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # ... and re-tied on load
    assert_same_weights(model, loaded)
    ckpt = load_checkpoint(tmp_path / "c")
    assert ckpt.history == history
    assert TrainConfig.from_dict(ckpt.train_config) == tiny_cfg()


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    save_checkpoint(tmp_path / "c", tiny_model(n_embd=32))
    msg = "shape mismatch for tensor 'transformer.wte.weight': checkpoint has (16, 32), model has (16, 48)"
    with pytest.raises(CheckpointError, match=re.escape(msg)):
        load_checkpoint(tmp_path / "c", tiny_model(n_embd=48))


def test_missing_checkpoint_message(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*meta.json"):
        load_checkpoint(tmp_path / "nothing")


def test_history_round_trips_through_json():
    h = History(
        steps=[1, 2], train_loss=[3.0, 2.5], lr=[1e-4, 2e-4], tokens_seen=[10, 20],
        grad_norm=[1.0, 0.5], eval_steps=[0, 2], val_loss=[3.1, 2.6],
    )  # fmt: skip
    assert History.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    with pytest.raises(ValueError, match="unknown History key 'bogus'"):
        History.from_dict({"bogus": []})


def test_names_stay_importable_from_train_and_gptlab():
    import gptlab
    import gptlab.train as train_module

    for name in ("save_checkpoint", "load_checkpoint", "load_model", "History"):
        assert getattr(gptlab, name) is getattr(checkpoint, name) is getattr(train_module, name)
    for name in ("Checkpoint", "CheckpointError", "load_tokenizer", "META_FILE", "WEIGHTS_FILE"):
        assert getattr(train_module, name) is getattr(checkpoint, name)


# ------------------------------------------------------------------------- atomic saves
def test_crash_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    old = tiny_model(seed=1)
    save_checkpoint(target, old, step=1)
    new = tiny_model(seed=2)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("gptlab.checkpoint.torch.save", crash)  # after the weights were written
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, new, configure_optimizer(new, 1e-3, 0.1), step=2)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no partial or temporary directory
    assert load_checkpoint(target).step == 1
    assert_same_weights(load_model(target), old)


def test_crash_between_the_two_renames_is_recovered(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    old = tiny_model(seed=1)
    save_checkpoint(target, old, step=1)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # target was moved aside; the new one is not in place yet
            raise OSError("power cut")
        real_rename(src, dst)

    monkeypatch.setattr("gptlab.checkpoint.os.rename", rename)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(target, tiny_model(seed=2), step=2)
    monkeypatch.setattr("gptlab.checkpoint.os.rename", real_rename)
    assert not target.exists()
    assert find_checkpoint(target) == tmp_path / ".ckpt.old"
    assert load_checkpoint(target).step == 1  # read from the intact old copy
    assert_same_weights(load_model(target), old)
    save_checkpoint(target, tiny_model(seed=3), step=3)  # the next save tidies up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert load_checkpoint(target).step == 3


# ------------------------------------------------------------------------- user files are safe
def test_folder_of_user_files_is_refused_and_kept(tmp_path):
    """Fails on the old code: the folder was renamed to .old and deleted at the first save."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.md").write_text("my notes")
    (folder / "train.txt").write_text(TEXT)
    before = tree(tmp_path)
    with pytest.raises(CheckpointError, match="not a gptlab checkpoint .*notes.md.*new or empty"):
        save_checkpoint(folder, tiny_model())
    assert tree(tmp_path) == before


def test_train_refuses_a_bad_out_dir_before_training(tmp_path, monkeypatch):
    """Fails on the old code: it trained, then deleted the folder (or the file) when saving."""
    steps = []

    def record(model, step):
        steps.append(step)

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.md").write_text("my notes")
    (tmp_path / "text.txt").write_text(TEXT)
    before = tree(tmp_path)
    cases = {
        str(tmp_path / "project"): "not a gptlab checkpoint",
        str(tmp_path / "text.txt"): "is an existing file",
        ".": "current directory",
    }
    monkeypatch.chdir(tmp_path)
    for out_dir, message in cases.items():
        cfg = tiny_cfg(checkpoint_dir=out_dir, sample_interval=1)
        with pytest.raises(CheckpointError, match=message):
            train(tiny_model(), token_stream(), None, cfg, sample_fn=record)
    assert steps == []  # refused before the first step
    assert tree(tmp_path) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)  # even an empty current directory: renaming it would strand the shell
    with pytest.raises(CheckpointError, match="current directory"):
        prepare_checkpoint_dir(".")


def test_checkpoint_folder_with_a_user_file_is_refused(tmp_path):
    target = tmp_path / "ckpt"
    save_checkpoint(target, tiny_model(), step=1)
    (target / "notes.md").write_text("results of this run")
    with pytest.raises(
        CheckpointError, match=r"also holds files gptlab did not write \(notes.md\)"
    ):
        save_checkpoint(target, tiny_model(seed=1), step=2)
    assert (target / "notes.md").read_text() == "results of this run"
    assert load_checkpoint(target).step == 1


def test_only_gptlab_leftovers_are_removed(tmp_path):
    """Fails on the old code: every .NAME.tmp-* was deleted, and a user's .NAME.old moved in."""
    target = tmp_path / "ckpt"
    mine = tmp_path / ".ckpt.tmp-mine"  # a user's folder that happens to match the pattern
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    stale = tmp_path / ".ckpt.tmp-killed"  # what a killed save leaves
    stale.mkdir()
    (stale / checkpoint._PARTIAL_MARKER).write_text(checkpoint.CHECKPOINT_FORMAT)
    (stale / "model.safetensors").write_bytes(b"half")
    save_checkpoint(target, tiny_model(), step=1)
    assert (mine / "keep.txt").read_text() == "mine"
    assert not stale.exists()

    user_old = tmp_path / ".other.old"
    user_old.mkdir()
    (user_old / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"\.other\.old' exists but is not a checkpoint"):
        save_checkpoint(tmp_path / "other", tiny_model(), step=1)
    assert (user_old / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------------------------- integrity
def test_meta_records_the_sha256_of_every_file(tmp_path):
    full_checkpoint(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    names = ["model.safetensors", "optimizer.pt", "tokenizer.json"]
    assert meta["files"] == {
        n: hashlib.sha256((tmp_path / "c" / n).read_bytes()).hexdigest() for n in names
    }


def test_flipped_bytes_in_the_weights_are_detected(tmp_path):
    """Fails on the old code: the damaged tensor loaded silently."""
    full_checkpoint(tmp_path / "c")
    weights = tmp_path / "c" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2  # inside the tensor data, far from the header
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupted: its sha256"):
        load_model(tmp_path / "c")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupted"):
        load_checkpoint(tmp_path / "c", tiny_model())


def test_damaged_tokenizer_file_is_detected(tmp_path):
    full_checkpoint(tmp_path / "c")
    tok = tmp_path / "c" / "tokenizer.json"
    tok.write_text(tok.read_text() + " ")  # still valid JSON, different bytes
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is corrupted"):
        load_tokenizer(tmp_path / "c")


def test_truncated_optimizer_state_does_not_stop_generation(tmp_path, capsys):
    """Fails on the old code: load_model read optimizer.pt too, and the truncated file broke it."""
    model = full_checkpoint(tmp_path / "c")
    state = tmp_path / "c" / "optimizer.pt"
    state.write_bytes(state.read_bytes()[:100])
    assert_same_weights(load_model(tmp_path / "c"), model)
    args = ["generate", "--checkpoint", str(tmp_path / "c"), "--prompt", "abc"]
    assert main([*args, "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("abc")
    with pytest.raises(CheckpointError, match=r"optimizer\.pt is corrupted"):
        load_checkpoint(tmp_path / "c")  # resuming reads it, and says which file is damaged


def test_checkpoints_without_hashes_still_load(tmp_path):
    """Checkpoints written before hashes were recorded (format_version 1) load unchecked."""
    model = full_checkpoint(tmp_path / "c")
    meta_file = tmp_path / "c" / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["files"]
    meta["format_version"] = 1
    meta_file.write_text(json.dumps(meta))
    assert_same_weights(load_model(tmp_path / "c"), model)
    assert load_tokenizer(tmp_path / "c").vocab_size == 16
    assert load_checkpoint(tmp_path / "c").training_state["step"] == 1
    meta["format_version"] = 99
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="newer gptlab .*upgrade gptlab"):
        load_model(tmp_path / "c")
