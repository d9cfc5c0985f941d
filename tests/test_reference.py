"""The shipped reference model is intact, loads, and is provably the output of its recipe."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import pathlib
import shutil

import pytest
import torch

from gptlab.reference import (
    MANIFEST_FILE,
    REFERENCE_DIR,
    WEIGHTS_FILE,
    ReferenceModelError,
    load_reference_model,
    load_reference_tokenizer,
    reference_manifest,
    reference_splits,
    sha256_file,
    verify_reference,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "reference.toml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return reference_manifest()


@pytest.fixture(scope="module")
def reference() -> tuple:
    return load_reference_model()


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the files ---------------------------------------------------------------------------------


def test_manifest_hashes_match_the_files(manifest):
    assert set(manifest["files"]) == {WEIGHTS_FILE, "tokenizer.json", "meta.json"}
    for name, expected in manifest["files"].items():
        assert sha256_file(REFERENCE_DIR / name) == expected, name
    assert verify_reference() == manifest


def test_weights_are_small_fp32_safetensors(manifest):
    from safetensors import safe_open

    size = (REFERENCE_DIR / WEIGHTS_FILE).stat().st_size
    assert size <= 25_000_000
    with safe_open(str(REFERENCE_DIR / WEIGHTS_FILE), "pt") as f:
        numel = 0
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            t = f.get_tensor(key)
            assert t.dtype == torch.float32, key
            numel += t.numel()
    assert numel == manifest["parameters"]  # the tied lm_head is stored once


def test_manifest_records_the_recipe(manifest):
    assert manifest["recipe"]["command"].endswith(
        "python -m gptlab train --config recipes/reference.toml"
    )
    assert manifest["training_time_seconds"] > 0
    assert len(manifest["early_train_losses"]) >= 5
    losses = manifest["losses"]
    assert losses["final_val_loss"] < losses["initial_val_loss"] - 2.0
    assert manifest["tokenizer"]["vocab_size"] == manifest["model_config"]["vocab_size"]


def _copy(tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "reference"
    shutil.copytree(REFERENCE_DIR, target)
    return target


def test_corrupted_weights_are_refused(tmp_path):
    copy = _copy(tmp_path)
    data = bytearray((copy / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle of a tensor
    (copy / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ReferenceModelError, match="model.safetensors is corrupted: its sha256"):
        load_reference_model(directory=copy)


def test_truncated_and_missing_files_are_refused(tmp_path):
    copy = _copy(tmp_path)
    (copy / "tokenizer.json").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ReferenceModelError, match="tokenizer.json is corrupted.*reinstall gptlab"):
        load_reference_tokenizer(copy)
    (copy / WEIGHTS_FILE).unlink()
    with pytest.raises(ReferenceModelError, match="model.safetensors is missing"):
        verify_reference(copy)
    (copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ReferenceModelError, match="not valid JSON"):
        reference_manifest(copy)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(ReferenceModelError, match="manifest.json is missing"):
        load_reference_model(directory=copy)


def test_bad_arguments_are_type_errors():
    with pytest.raises(TypeError, match="device must be None, a string"):
        load_reference_model(device=0)
    with pytest.raises(TypeError, match="directory must be a path or None"):
        reference_manifest(3)


# --- the model ---------------------------------------------------------------------------------


def test_loaded_model_matches_manifest(reference, manifest):
    model, tokenizer = reference
    assert not model.training
    assert model.config.to_dict() == manifest["model_config"]
    assert model.num_parameters() == manifest["parameters"]
    assert tokenizer.vocab_size == manifest["tokenizer"]["vocab_size"]
    assert (
        tokenizer.decode(tokenizer.encode("ROMEO:\nO, she doth teach"))
        == "ROMEO:\nO, she doth teach"
    )


def test_heldout_loss_matches_manifest(reference, manifest):
    from gptlab.train import evaluate

    model, _ = reference
    check = manifest["heldout_check"]
    _, val_ids = reference_splits()
    assert len(val_ids) == manifest["data"]["val_tokens"]
    loss = evaluate(
        model, val_ids, batch_size=check["batch_size"], block_size=check["block_size"],
        eval_iters=check["eval_iters"], seed=check["seed"], amp=False,
    )  # fmt: skip
    assert loss == pytest.approx(check["loss"], rel=1e-4)
    # a small fixed batch is a noisy estimate of the full validation loss, but not that noisy
    assert abs(loss - manifest["losses"]["final_val_loss"]) < 0.3
    assert loss < math.log(manifest["model_config"]["vocab_size"]) - 2.0  # far from chance


def test_cli_generate_runs_on_the_shipped_folder(capsys):
    from gptlab.cli import main

    rc = main(["generate", "--checkpoint", str(REFERENCE_DIR), "--prompt", "ROMEO:",
               "--max-new-tokens", "5", "--seed", "0"])  # fmt: skip
    assert rc == 0 and capsys.readouterr().out.startswith("ROMEO:")


# --- the recipe --------------------------------------------------------------------------------


def test_recipe_reproduces_the_recorded_early_losses(manifest, monkeypatch):
    """Re-run the recipe's first steps on the CPU: the losses must equal those recorded."""
    from gptlab.cli import build_run, load_run_config
    from gptlab.train import train

    monkeypatch.chdir(ROOT)  # the recipe's paths are relative to the repository root
    run = load_run_config(RECIPE)
    built = build_run(run)
    assert built.model.config.to_dict() == manifest["model_config"]
    recorded = {k: v for k, v in manifest["train_config"].items()}
    assert {
        k: v for k, v in built.train_config.to_dict().items() if k != "checkpoint_dir"
    } == recorded
    n = 5
    cfg = dataclasses.replace(
        built.train_config, checkpoint_dir=None, eval_interval=0, progress=False
    )
    history = train(built.model, built.train_ids, built.val_ids, cfg, stop_at=n)
    expected = manifest["early_train_losses"][:n]
    assert history.train_loss == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_tokenizer_recipe_reproduces_the_shipped_tokenizer():
    """BPE training is deterministic: the script rebuilds the shipped tokenizer exactly."""
    script = _load_script("reference_tokenizer")
    fresh = script.train_reference_tokenizer()
    shipped = load_reference_tokenizer()
    assert fresh.merges == shipped.merges
    assert fresh.special_tokens == shipped.special_tokens


def test_recipe_file_points_at_the_shipped_tokenizer():
    from gptlab.cli import load_run_config

    run = load_run_config(RECIPE)
    assert (ROOT / run.data.tokenizer).resolve() == (REFERENCE_DIR / "tokenizer.json").resolve()
    meta = json.loads((REFERENCE_DIR / "meta.json").read_text(encoding="utf-8"))
    assert meta["tokenizer"]["kind"] == "BPETokenizer"
