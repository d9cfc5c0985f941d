"""Training loop, schedule, optimizer groups, clipping, accumulation, checkpoints and resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from gptlab.data import get_batch
from gptlab.model import GPT, GPTConfig
from gptlab.train import (
    CheckpointError,
    TrainConfig,
    accumulate_gradients,
    clip_gradients,
    configure_optimizer,
    evaluate,
    load_checkpoint,
    load_tokenizer,
    lr_at,
    split_decay_params,
    train,
)

VOCAB = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, dropout: float = 0.0, n_embd: int = 32) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        GPTConfig(
            vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=n_embd, dropout=dropout
        )
    )


def tiny_cfg(**overrides) -> TrainConfig:
    base = dict(
        batch_size=4, block_size=16, max_steps=6, lr=3e-3, warmup_steps=2, eval_interval=0,
        eval_iters=2, device="cpu", progress=False, seed=123,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def token_stream(n: int = 600, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(VOCAB, (n,), generator=g)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


class GradCapture:
    """Record (clones of) the gradients each time the optimizer is about to step."""

    def __enter__(self) -> GradCapture:
        self.steps: list[dict[int, torch.Tensor]] = []
        self.norms: list[float] = []

        def hook(optimizer, args, kwargs):
            grads = [
                p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            self.norms.append(
                float(
                    torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(x) for x in grads])
                    )
                )
            )
            self.steps.append({i: x.clone() for i, x in enumerate(grads)})

        self.handle = register_optimizer_step_pre_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# ------------------------------------------------------------------------- learning
def test_memorises_a_repeated_sequence():
    torch.manual_seed(0)
    pattern = torch.randperm(VOCAB)
    ids = pattern.repeat(40)  # every token determines the next one
    model = GPT(GPTConfig.preset("nano", vocab_size=VOCAB, block_size=16))
    cfg = TrainConfig(
        batch_size=8, block_size=16, max_steps=25, lr=1e-2, warmup_steps=3, eval_interval=0,
        device="cpu", progress=False,
    )  # fmt: skip
    history = train(model, ids, None, cfg)
    assert history.train_loss[0] > 2.0  # starts near ln(16) = 2.77
    assert history.train_loss[-1] < 0.1
    assert history.steps == list(range(1, 26))
    assert history.tokens_seen[-1] == 25 * 8 * 16


def test_periodic_evaluation_and_perplexity():
    ids = token_stream()
    model = tiny_model()
    cfg = tiny_cfg(max_steps=4, eval_interval=2, eval_iters=3)
    history = train(model, ids[:400], ids[400:], cfg)
    assert history.eval_steps == [0, 2, 4]  # before training, every 2 steps, and the end
    # the loop's number is the mean over eval_iters fixed batches of the held-out tokens
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model.eval()
    with torch.no_grad():
        want = sum(float(model(*get_batch(ids[400:], 4, 16, generator=g))[1]) for _ in range(3)) / 3
    assert history.val_loss[-1] == pytest.approx(want, rel=1e-6)
    assert history.val_perplexity[-1] == pytest.approx(math.exp(want), rel=1e-6)
    assert evaluate(
        model, ids[400:], batch_size=4, block_size=16, eval_iters=3, seed=cfg.seed + 1
    ) == pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------------------- schedule
def test_lr_schedule_key_points():
    kw = dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, **kw) == pytest.approx(1e-3 / 10)  # first step: max_lr * 1 / warmup
    assert lr_at(4, **kw) == pytest.approx(1e-3 * 5 / 10)
    assert lr_at(9, **kw) == pytest.approx(1e-3)  # last warm-up step
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # end of warm-up: the peak
    assert lr_at(60, **kw) == pytest.approx((1e-3 + 1e-4) / 2)  # middle of the decay
    assert lr_at(110, **kw) == pytest.approx(1e-4)  # end of decay
    assert lr_at(500, **kw) == pytest.approx(1e-4)
    assert lr_at(0, max_lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=5) == 1.0  # no warm-up


def test_lr_decay_matches_torch_cosine_annealing():
    W, S, max_lr, min_lr = 5, 45, 2e-3, 2e-4
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=S - W, eta_min=min_lr)
    for t in range(S - W + 1):
        ours = lr_at(W + t, max_lr=max_lr, min_lr=min_lr, warmup_steps=W, max_steps=S)
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), t
        opt.step()
        sched.step()


def test_loop_uses_the_schedule():
    cfg = tiny_cfg(max_steps=6, warmup_steps=2, lr=1e-3, min_lr=1e-5)
    history = train(tiny_model(), token_stream(), None, cfg)
    want = [lr_at(s, max_lr=1e-3, min_lr=1e-5, warmup_steps=2, max_steps=6) for s in range(6)]
    assert history.lr == pytest.approx(want)
    assert TrainConfig(lr=1e-3).final_lr == pytest.approx(1e-4)  # default floor: lr / 10


def test_lr_at_rejects_bad_arguments():
    with pytest.raises(ValueError, match="warmup_steps <= max_steps"):
        lr_at(0, max_lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=5)
    with pytest.raises(ValueError, match="min_lr <= max_lr"):
        lr_at(0, max_lr=0.1, min_lr=1.0, warmup_steps=1, max_steps=5)
    with pytest.raises(ValueError, match="non-negative int"):
        lr_at(-1, max_lr=1.0, min_lr=0.1, warmup_steps=1, max_steps=5)


# ------------------------------------------------------------------------- optimizer
def test_two_parameter_groups_like_gpt2():
    model = tiny_model()
    decay, no_decay = split_decay_params(model)
    matrices = {
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert set(decay) == matrices
    assert "transformer.wte.weight" in no_decay and "transformer.wpe.weight" in no_decay
    assert "lm_head.weight" not in decay + no_decay  # tied to wte: listed once
    assert all(
        n.endswith(".bias")
        or ".ln_" in n
        or n in ("transformer.wte.weight", "transformer.wpe.weight")
        for n in no_decay
    )
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    ids = [{id(p) for p in g["params"]} for g in opt.param_groups]
    params = dict(model.named_parameters())
    assert ids[0] == {id(params[n]) for n in decay}
    assert ids[1] == {id(params[n]) for n in no_decay}
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_parameters()


def test_frozen_parameters_are_left_out():
    model = tiny_model()
    model.transformer.wpe.weight.requires_grad_(False)
    decay, no_decay = split_decay_params(model)
    assert "transformer.wpe.weight" not in decay + no_decay


# ------------------------------------------------------------------------- clipping
def test_clip_gradients_bounds_the_norm():
    model = tiny_model()
    x, y = get_batch(token_stream(), 4, 16, generator=torch.Generator().manual_seed(0))
    (model(x, y)[1] * 1000).backward()
    before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert before > 1.0
    reported = clip_gradients(model, 0.5)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert reported == pytest.approx(float(before), rel=1e-5)
    assert float(after) == pytest.approx(0.5, rel=1e-4)
    assert clip_gradients(model, 0.0) == pytest.approx(float(after), rel=1e-5)  # 0: measure only


def test_training_loop_clips_before_every_step():
    with GradCapture() as cap:
        history = train(
            tiny_model(), token_stream(), None, tiny_cfg(max_steps=3, grad_clip=1e-3, lr=1e-2)
        )
    assert len(cap.norms) == 3
    assert all(n <= 1e-3 * (1 + 1e-4) for n in cap.norms)
    assert all(n > 1e-3 for n in history.grad_norm)  # the pre-clipping norms were larger


# ------------------------------------------------------------------------- accumulation
def test_accumulated_micro_batches_equal_one_big_batch():
    x, y = get_batch(token_stream(), 8, 16, generator=torch.Generator().manual_seed(1))
    big, small = tiny_model(), tiny_model()
    loss_big = accumulate_gradients(big, [(x, y)])
    loss_small = accumulate_gradients(small, [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)])
    assert float(loss_small) == pytest.approx(float(loss_big), rel=1e-6)
    for (name, p), q in zip(big.named_parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_loop_accumulation_equals_bigger_batch():
    """The loop's k micro-batches of B draw the same windows as one batch of k*B."""
    grads = []
    for batch, accum in ((8, 1), (2, 4)):
        with GradCapture() as cap:
            train(
                tiny_model(),
                token_stream(),
                None,
                tiny_cfg(
                    max_steps=1,
                    warmup_steps=0,
                    batch_size=batch,
                    grad_accum_steps=accum,
                    grad_clip=0.0,
                ),
            )
        grads.append(cap.steps[0])
    for i in grads[0]:
        torch.testing.assert_close(grads[1][i], grads[0][i], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------- sampling hook
def test_sample_hook_is_called_and_does_not_change_training():
    calls = []

    def sample(model, step):
        calls.append((step, model.training))
        torch.randn(100)  # consumes randomness: must not leak into the training run
        return None

    cfg = tiny_cfg(max_steps=4, sample_interval=2, progress=False)
    a, b = tiny_model(dropout=0.1), tiny_model(dropout=0.1)
    train(a, token_stream(), None, cfg, sample_fn=sample)
    train(b, token_stream(), None, cfg)
    assert calls == [(2, False), (4, False)]
    assert_same_weights(a, b)


# ------------------------------------------------------------------------- checkpoints
def test_resume_is_bit_exact(tmp_path):
    ids = token_stream()
    cfg = tiny_cfg(max_steps=6, grad_accum_steps=2, checkpoint_dir=str(tmp_path / "ckpt"))
    straight = tiny_model(dropout=0.1)
    full_history = train(
        straight,
        ids[:500],
        ids[500:],
        TrainConfig(**{**cfg.to_dict(), "checkpoint_dir": None, "eval_interval": 2}),
    )

    first = tiny_model(dropout=0.1)
    train(
        first, ids[:500], ids[500:], TrainConfig(**{**cfg.to_dict(), "eval_interval": 2}), stop_at=3
    )
    assert load_checkpoint(tmp_path / "ckpt").step == 3
    resumed = tiny_model(
        seed=99, dropout=0.1
    )  # different initial weights: all must come from the checkpoint
    history = train(
        resumed,
        ids[:500],
        ids[500:],
        TrainConfig(**{**cfg.to_dict(), "eval_interval": 2}),
        resume_from=tmp_path / "ckpt",
    )

    assert_same_weights(straight, resumed)
    assert history.train_loss == full_history.train_loss
    assert history.val_loss == full_history.val_loss
    assert history.steps == list(range(1, 7))


def test_resume_from_a_checkpoint_a_crashed_save_left_behind(tmp_path):
    """A save that died between its renames leaves only .ckpt.old: resuming continues from it."""
    ids = token_stream()
    cfg = tiny_cfg(max_steps=4, checkpoint_dir=str(tmp_path / "ckpt"))
    straight = tiny_model()
    train(straight, ids, None, TrainConfig(**{**cfg.to_dict(), "checkpoint_dir": None}))
    train(tiny_model(), ids, None, cfg, stop_at=2)
    os.rename(tmp_path / "ckpt", tmp_path / ".ckpt.old")
    resumed = tiny_model(seed=5)
    history = train(resumed, ids, None, cfg, resume_from=tmp_path / "ckpt")
    assert history.steps == [1, 2, 3, 4]
    assert_same_weights(straight, resumed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# ------------------------------------------------------------------------- resume settings
@pytest.fixture
def two_step_checkpoint(tmp_path):
    """A run of tiny_cfg(max_steps=6) stopped after 2 steps; returns (cfg, directory)."""
    cfg = tiny_cfg(checkpoint_dir=str(tmp_path / "ckpt"))
    train(tiny_model(), token_stream(), None, cfg, stop_at=2)
    return cfg, tmp_path / "ckpt"


def test_resume_refuses_a_different_model_config(two_step_checkpoint):
    """Fails on the old code: n_head 2 -> 4 has the same shapes, so it trained on silently."""
    cfg, ckpt = two_step_checkpoint
    torch.manual_seed(0)
    other = GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=4, n_embd=32))
    with pytest.raises(CheckpointError, match=r"model's config differs .*\(n_head: 2 -> 4\)"):
        train(other, token_stream(), None, cfg, resume_from=ckpt, allow_config_change=True)
    assert load_checkpoint(ckpt).step == 2  # nothing was trained or saved


def test_resume_names_train_config_changes_and_needs_permission(two_step_checkpoint):
    """Fails on the old code: a changed lr, batch size and seed were accepted without a word."""
    cfg, ckpt = two_step_checkpoint
    changed = TrainConfig(**{**cfg.to_dict(), "lr": 1e-3, "batch_size": 3, "seed": 7})
    pattern = (
        r"batch_size: 4 -> 3; lr: 0\.003 -> 0\.001; .*seed: 123 -> 7.*allow_config_change=True"
    )
    with pytest.raises(CheckpointError, match=pattern):
        train(tiny_model(), token_stream(), None, changed, resume_from=ckpt)
    assert load_checkpoint(ckpt).step == 2
    with pytest.warns(UserWarning, match=r"changed TrainConfig: batch_size: 4 -> 3"):
        history = train(
            tiny_model(), token_stream(), None, changed, resume_from=ckpt, allow_config_change=True
        )
    assert history.steps == list(range(1, 7))
    assert load_checkpoint(ckpt).train_config["lr"] == 1e-3  # the new settings are recorded


def test_resume_accepts_bookkeeping_changes(two_step_checkpoint):
    cfg, ckpt = two_step_checkpoint
    shown = TrainConfig(**{**cfg.to_dict(), "eval_interval": 3, "checkpoint_interval": 1})
    history = train(tiny_model(), token_stream(), token_stream(seed=1), shown, resume_from=ckpt)
    assert history.steps == list(range(1, 7)) and history.eval_steps == [3, 6]


# ------------------------------------------------------------------------- signals
SIGTERM_SCRIPT = """
import sys

import torch

from gptlab.model import GPT, GPTConfig
from gptlab.tokenizers import CharTokenizer
from gptlab.train import TrainConfig, train

torch.set_num_threads(1)
text = "the quick brown fox jumps over the lazy dog. " * 20
tokenizer = CharTokenizer.from_text(text)
torch.manual_seed(0)
model = GPT(
    GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
)
cfg = TrainConfig(
    batch_size=2, block_size=16, max_steps=1_000_000, warmup_steps=1, eval_interval=0,
    sample_interval=1, device="cpu", progress=False, checkpoint_dir=sys.argv[1],
)


def report(model, step):
    print(f"step {step}", flush=True)


train(model, torch.tensor(tokenizer.encode(text)), cfg=cfg, sample_fn=report, tokenizer=tokenizer)
"""


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
    """Fails on the old code: SIGTERM killed the process at once and nothing was saved."""
    script = tmp_path / "run.py"
    script.write_text(SIGTERM_SCRIPT, encoding="utf-8")
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(runs / "ckpt")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()  # the first step is done
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert first == "step 1\n", err[-2000:]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped at step" in err and "resume" in err
    assert [p.name for p in runs.iterdir()] == ["ckpt"]  # no .tmp-* or .old left behind

    ckpt = load_checkpoint(runs / "ckpt")
    assert ckpt.step >= 1 and ckpt.history.steps == list(range(1, ckpt.step + 1))
    text = "the quick brown fox jumps over the lazy dog. " * 20
    tokenizer = load_tokenizer(runs / "ckpt")
    history = train(
        GPT(GPTConfig.from_dict(ckpt.model_config)),
        torch.tensor(tokenizer.encode(text)),
        cfg=TrainConfig.from_dict(ckpt.train_config),
        resume_from=runs / "ckpt",
        stop_at=ckpt.step + 1,
    )
    assert history.steps == list(range(1, ckpt.step + 2))
    assert load_checkpoint(runs / "ckpt").step == ckpt.step + 1


def test_ctrl_c_saves_the_current_step_then_raises_keyboard_interrupt(tmp_path):
    """Fails on the old code: Ctrl-C raised at once and the steps since the last save were lost.

    The checkpoint holds the full state of step 2: resuming it gives the same weights as an
    uninterrupted run.
    """
    ids = token_stream()
    cfg = tiny_cfg(max_steps=4, sample_interval=2, checkpoint_dir=str(tmp_path / "ckpt"))

    def press_ctrl_c(model, step):
        os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(dropout=0.1), ids, None, cfg, sample_fn=press_ctrl_c)
    assert signal.getsignal(signal.SIGINT) is handler  # our handler is gone again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert load_checkpoint(tmp_path / "ckpt").step == 2

    straight = tiny_model(dropout=0.1)
    train(straight, ids, None, TrainConfig(**{**cfg.to_dict(), "checkpoint_dir": None}))
    resumed = tiny_model(seed=9, dropout=0.1)
    train(resumed, ids, None, cfg, resume_from=tmp_path / "ckpt")
    assert_same_weights(straight, resumed)


# ------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("overrides", "error", "pattern"),
    [
        (
            {"warmup_steps": 50, "max_steps": 10},
            ValueError,
            r"warmup_steps \(50\) must be <= max_steps \(10\)",
        ),
        (
            {"grad_accum_steps": 0},
            ValueError,
            r"grad_accum_steps must be >= 1, got 0; use 1 for no accumulation",
        ),
        ({"batch_size": "8"}, TypeError, r"batch_size must be an int, got '8'"),
        ({"batch_size": 0}, ValueError, r"batch_size must be >= 1"),
        ({"lr": 0.0}, ValueError, r"lr must be > 0"),
        ({"lr": 1e-4, "min_lr": 1e-3}, ValueError, r"min_lr \(0.001\) must be <= lr"),
        (
            {"eval_interval": -1},
            ValueError,
            r"eval_interval must be >= 0.*0 to turn evaluation off",
        ),
        ({"device": "tpu"}, ValueError, r"device must be 'auto', 'cpu'"),
        ({"betas": (0.9, 1.5)}, ValueError, r"betas must be two numbers in \[0, 1\)"),
        ({"grad_clip": float("nan")}, ValueError, r"grad_clip must be finite"),
        ({"seed": -1}, ValueError, r"seed must be >= 0"),
    ],
)
def test_train_config_validation(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        TrainConfig(**overrides)


def test_train_config_from_dict():
    cfg = TrainConfig.from_dict({"batch_size": 2, "betas": [0.8, 0.9]})
    assert cfg.betas == (0.8, 0.9)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(
        ValueError, match="unknown TrainConfig key 'batchsize'; valid keys are: .*batch_size"
    ):
        TrainConfig.from_dict({"batchsize": 2})


def test_train_rejects_block_size_beyond_the_model():
    with pytest.raises(
        ValueError, match=r"block_size \(32\) exceeds the model's block_size \(16\)"
    ):
        train(tiny_model(), token_stream(), None, tiny_cfg(block_size=32))
