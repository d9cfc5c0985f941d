"""LoRA: exact start, the update formula, frozen base, merging, parameter and memory counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gptlab.lora import (
    LoRALinear,
    apply_lora,
    count_trainable_parameters,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_lora,
    training_memory,
)
from gptlab.model import GPT, GPTConfig
from gptlab.train import configure_optimizer

CFG = GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=24)


pytestmark = pytest.mark.usefixtures("one_thread")


def base_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CFG).eval()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CFG.vocab_size, (4, CFG.block_size + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def train_steps(model: GPT, steps: int = 5, lr: float = 1e-2) -> None:
    opt = configure_optimizer(model, lr=lr, weight_decay=0.1)
    x, y = batch()
    model.train()
    for _ in range(steps):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_lora_linear_computes_the_formula():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, r=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 7, 6)
    W, b, A, B = base.weight, base.bias, layer.lora_A, layer.lora_B
    expected = x @ W.T + b + (4.0 / 2) * (x @ A.T) @ B.T
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * B @ A)
    assert layer.lora_A.shape == (2, 6) and layer.lora_B.shape == (5, 2)
    assert torch.count_nonzero(LoRALinear(nn.Linear(6, 5), r=2).lora_B) == 0
    bound = 1 / 6**0.5  # kaiming_uniform_(a=sqrt(5)) on fan_in=6, as nn.Linear's own init
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > bound / 4


def test_at_init_lora_model_equals_base_model_exactly():
    base = base_model()
    lora = apply_lora(base_model(), r=4, alpha=8)
    x, _ = batch()
    assert torch.equal(lora(x)[0], base(x)[0])


def test_only_lora_parameters_train_and_count_formula():
    model = apply_lora(base_model(), r=4, alpha=8, target_modules=("c_attn", "c_proj", "c_fc"))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    C, L, r = CFG.n_embd, CFG.n_layer, 4
    # per block: c_attn (C -> 3C), attn.c_proj (C -> C), c_fc (C -> 4C), mlp.c_proj (4C -> C)
    per_block = r * (C + 3 * C) + r * (C + C) + r * (C + 4 * C) + r * (4 * C + C)
    assert count_trainable_parameters(model) == L * per_block
    wrapped = dict(lora_layers(model))
    assert len(wrapped) == 4 * L
    assert sum(r * (m.in_features + m.out_features) for m in wrapped.values()) == L * per_block
    only_attn = apply_lora(base_model(), r=2, target_modules=("c_attn",))
    assert count_trainable_parameters(only_attn) == L * 2 * (C + 3 * C)
    assert count_trainable_parameters(base_model()) == base_model().num_parameters()


def test_base_weights_bit_identical_after_lora_training():
    model = apply_lora(base_model(), r=4, alpha=8)
    before = {
        k: v.clone() for k, v in model.state_dict().items() if not k.endswith(("lora_A", "lora_B"))
    }
    train_steps(model)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert any(torch.count_nonzero(m.lora_B) > 0 for _, m in lora_layers(model))  # it did learn
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_merged_model_equals_unmerged_after_training():
    model = apply_lora(base_model(), r=4, alpha=8, dropout=0.1)
    train_steps(model)
    x, _ = batch(seed=7)
    unmerged = model(x)[0]
    merge_lora(model)
    assert not list(lora_layers(model))
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("c_attn"))
    torch.testing.assert_close(model(x)[0], unmerged, atol=1e-5, rtol=0)
    assert set(model.state_dict()) == set(base_model().state_dict())  # a plain GPT again


def test_merge_adds_scaled_product_into_weight():
    model = apply_lora(base_model(), r=2, alpha=6, target_modules=("c_fc",))
    layer = model.transformer.h[0].mlp.c_fc
    with torch.no_grad():
        layer.lora_B.normal_()
    W = layer.base.weight.clone()
    expected = W + 3.0 * layer.lora_B @ layer.lora_A
    merge_lora(model)
    torch.testing.assert_close(model.transformer.h[0].mlp.c_fc.weight, expected)


def test_lora_state_dict_round_trip():
    model = apply_lora(base_model(), r=2, alpha=4)
    train_steps(model, steps=2)
    state = lora_state_dict(model)
    assert state and all(k.endswith(("lora_A", "lora_B")) for k in state)
    fresh = apply_lora(base_model(), r=2, alpha=4)
    load_lora_state_dict(fresh, state)
    x, _ = batch()
    torch.testing.assert_close(fresh(x)[0], model(x)[0])
    with pytest.raises(ValueError, match="apply_lora with the same r and target_modules"):
        load_lora_state_dict(apply_lora(base_model(), r=2, target_modules=("c_fc",)), state)


def test_training_memory_counts_adamw_state_exactly():
    full = base_model()
    opt = configure_optimizer(full, lr=1e-3, weight_decay=0.0)
    train_steps_with(full, opt)
    n = full.num_parameters()
    n_tensors = len(list(full.parameters()))
    mem = training_memory(full, opt)
    # float32: 4 bytes per number; AdamW keeps exp_avg and exp_avg_sq (+ a 4-byte step) per tensor
    assert mem["parameters"] == 4 * n and mem["gradients"] == 4 * n
    assert mem["optimizer"] == 8 * n + 4 * n_tensors
    lora = apply_lora(base_model(), r=4, alpha=8)
    opt = configure_optimizer(lora, lr=1e-3, weight_decay=0.0)
    train_steps_with(lora, opt)
    k = count_trainable_parameters(lora)
    mem = training_memory(lora, opt)
    assert mem["parameters"] == 4 * (n + k) and mem["gradients"] == 4 * k
    assert mem["optimizer"] == 8 * k + 4 * 2 * len(list(lora_layers(lora)))
    assert mem["total"] == mem["parameters"] + mem["gradients"] + mem["optimizer"]


def train_steps_with(model: GPT, opt: torch.optim.Optimizer) -> None:
    x, y = batch()
    _, loss = model(x, y)
    loss.backward()
    opt.step()


def test_bad_inputs():
    with pytest.raises(ValueError, match="must be >= 1"):
        apply_lora(base_model(), r=0)
    with pytest.raises(ValueError, match="must be >= 1"):
        LoRALinear(nn.Linear(4, 4), r=-2)
    with pytest.raises(TypeError, match="must be an int"):
        apply_lora(base_model(), r=2.5)
    with pytest.raises(ValueError, match="no Linear layer named 'q_proj'.*c_attn, c_fc, c_proj"):
        apply_lora(base_model(), r=2, target_modules=("q_proj",))
    with pytest.raises(ValueError, match="weight tying"):
        apply_lora(base_model(), r=2, target_modules=("lm_head",))
    with pytest.raises(TypeError, match="wrap it"):
        apply_lora(base_model(), r=2, target_modules="c_attn")
    with pytest.raises(ValueError, match="is empty"):
        apply_lora(base_model(), r=2, target_modules=())
    with pytest.raises(ValueError, match="r <= 4"):
        LoRALinear(nn.Linear(4, 8), r=5)
    with pytest.raises(ValueError, match="alpha must be a number > 0"):
        LoRALinear(nn.Linear(4, 8), r=2, alpha=0)
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1), r=1)
    model = apply_lora(base_model(), r=2)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(model, r=2)
    with pytest.raises(ValueError, match="no LoRA layers to merge"):
        merge_lora(base_model())
    with pytest.raises(ValueError, match="call apply_lora"):
        lora_state_dict(base_model())


def test_adapter_save_and_verified_load(tmp_path):
    import json

    from gptlab.lora import (
        ADAPTER_FILE,
        AdapterFileError,
        load_lora_adapter,
        save_lora_adapter,
    )
    from gptlab.utils import sha256_file

    model = apply_lora(base_model(), r=2, alpha=4, target_modules=("c_attn", "c_fc"))
    train_steps(model, steps=2)
    manifest = save_lora_adapter(model, tmp_path / "adapter", metadata={"base": "tiny"})
    assert manifest["r"] == 2 and manifest["alpha"] == 4.0
    assert manifest["target_modules"] == ["c_attn", "c_fc"]
    assert manifest["parameters"] == sum(v.numel() for v in lora_state_dict(model).values())
    assert manifest["metadata"] == {"base": "tiny"}
    fresh = base_model()
    loaded = load_lora_adapter(fresh, tmp_path / "adapter", sha256=manifest["files"][ADAPTER_FILE])
    assert loaded == manifest
    x, _ = batch()
    torch.testing.assert_close(fresh(x)[0], model(x)[0], rtol=0, atol=0)

    # a changed file is refused, by the manifest's hash and by a pinned one
    weights = tmp_path / "adapter" / ADAPTER_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterFileError, match="the manifest expects"):
        load_lora_adapter(base_model(), tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    meta["files"][ADAPTER_FILE] = sha256_file(weights)
    (tmp_path / "adapter" / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match="the caller expects"):
        load_lora_adapter(base_model(), tmp_path / "adapter", sha256="0" * 64)
    with pytest.raises(AdapterFileError, match="is missing"):
        load_lora_adapter(base_model(), tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_lora_adapter(base_model(), tmp_path / "empty")

    # an existing adapter is replaced only when asked, and no temporary file is left behind
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_lora_adapter(model, tmp_path / "adapter")
    again = save_lora_adapter(model, tmp_path / "adapter", overwrite=True)
    assert again["files"][ADAPTER_FILE] == sha256_file(weights) == manifest["files"][ADAPTER_FILE]
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == sorted(
        [ADAPTER_FILE, "adapter.json"]
    )
