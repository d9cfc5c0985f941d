"""The command line: help texts, train -> generate round trip, and clear configuration errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gptlab.cli import load_run_config, main

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
