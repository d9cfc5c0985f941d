"""Chapter 8's shipped chatbot: the files are what recipes/chat_model.py wrote (hashes checked,
the first fine-tuning steps re-run), and it answers like a chat-tuned model."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from gptlab.chat import CHAT_MODEL_DIR, ChatDataset, load_chat_model
from gptlab.reference import MANIFEST_FILE, ReferenceModelError, load_reference_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe():
    spec = importlib.util.spec_from_file_location(
        "recipe_chat_model", ROOT / "recipes" / "chat_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest() -> dict:
    return json.loads((CHAT_MODEL_DIR / MANIFEST_FILE).read_text(encoding="utf-8"))


def test_loads_verified_and_differs_from_the_reference_model():
    model, tok = load_chat_model()
    base, base_tok = load_reference_model()
    assert tok.vocab_size == base_tok.vocab_size and not model.training
    assert model.config == base.config
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)  # it was fine-tuned


def test_a_damaged_file_is_refused(tmp_path):
    copy = tmp_path / "chat_model"
    shutil.copytree(CHAT_MODEL_DIR, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ReferenceModelError, match="model.safetensors is corrupted"):
        load_chat_model(directory=copy)


def test_held_out_reply_loss_equals_the_recorded_one():
    recipe = _recipe()
    model, tok = load_chat_model()
    _, val_set = recipe.datasets(tok, model.config.block_size)
    assert isinstance(val_set, ChatDataset)
    from gptlab.chat import evaluate_chat

    loss = evaluate_chat(model, val_set)
    assert loss == pytest.approx(_manifest()["results"]["val_reply_loss_after"], abs=1e-3)
    assert loss < _manifest()["results"]["val_reply_loss_before"] - 3  # it learned the replies


@pytest.mark.slow
def test_recipe_first_steps_reproduce_the_stored_losses():
    recipe = _recipe()
    warmup = recipe.SETTINGS["warmup_steps"]  # the learning rate of the warm-up steps does not
    _, _, history = recipe.fine_tune(warmup)  # depend on the run's length: the same 5 losses
    stored = _manifest()["results"]["first_train_losses"]
    assert history.train_loss[:5] == pytest.approx(stored, rel=1e-4)
