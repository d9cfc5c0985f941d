"""Command line: ``python -m gptlab train --config run.toml`` and ``python -m gptlab generate``.

A training run is described by one TOML file (every key is checked; a typo is an error that
names it)::

    out_dir = "runs/micro"        # the checkpoint directory (relative paths: to the cwd)

    [model]                       # GPTConfig fields, or a preset plus overrides
    preset = "micro"
    dropout = 0.1

    [data]
    corpus = "shakespeare"        # a gptlab corpus ... or text_file = "my.txt"
    tokenizer = "char"            # "gpt2", "char" or the path of a saved BPETokenizer JSON
    val_fraction = 0.1

    [train]                       # TrainConfig fields (see gptlab.train.TrainConfig)
    batch_size = 32
    max_steps = 2000

    [sample]                      # what the model writes every train.sample_interval steps
    prompt = "ROMEO:"
    max_new_tokens = 200

Launch the same file with ``torchrun --nproc_per_node=N -m gptlab train --config run.toml``
to train data-parallel on N processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigError", "RunConfig", "build_run", "load_run_config", "main"]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Each rank writes its final weights here (rank<r>.safetensors) when this variable is set:
# how tests check that data-parallel processes end identical.
DUMP_WEIGHTS_ENV = "GPTLAB_DUMP_WEIGHTS_DIR"


class ConfigError(ValueError):
    """The run configuration file is missing, not TOML, or has an unknown key or a bad value."""


@dataclass
class DataSection:
    corpus: str | None = "shakespeare"
    text_file: str | None = None
    tokenizer: str = "gpt2"
    val_fraction: float = 0.1


@dataclass
class SampleSection:
    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200


@dataclass
class RunConfig:
    """A parsed run file: model fields, data source, TrainConfig fields, sampling, out_dir."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataSection = field(default_factory=DataSection)
    train: dict[str, Any] = field(default_factory=dict)
    sample: SampleSection = field(default_factory=SampleSection)
    out_dir: str = "out"


_TOP_KEYS = {"out_dir", "model", "data", "train", "sample"}


def _check_keys(section: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in given:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {key!r} in [{section}]; allowed keys: {', '.join(sorted(allowed))}"
            )


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table (a [{name}] section), got {value!r}")
    return dict(value)


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and check a run TOML file; every unknown key is an error that names it."""
    from gptlab.model import GPTConfig
    from gptlab.train import TrainConfig

    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass the path of a .toml run file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(
                f"unknown top-level key {key!r} in {path}; allowed: {', '.join(sorted(_TOP_KEYS))}"
            )
    model = _section(raw, "model")
    _check_keys("model", model, ["preset", *[f.name for f in dataclasses.fields(GPTConfig)]])
    data = _section(raw, "data")
    _check_keys("data", data, [f.name for f in dataclasses.fields(DataSection)])
    if "text_file" in data and "corpus" in data:
        raise ConfigError("[data] sets both corpus and text_file; keep one of them")
    if "text_file" in data:
        data["corpus"] = None
    train = _section(raw, "train")
    if "checkpoint_dir" in train:
        raise ConfigError(
            "[train] checkpoint_dir is set by the top-level out_dir; remove it from [train]"
        )
    _check_keys(
        "train",
        train,
        [f.name for f in dataclasses.fields(TrainConfig) if f.name != "checkpoint_dir"],
    )
    sample = _section(raw, "sample")
    _check_keys("sample", sample, [f.name for f in dataclasses.fields(SampleSection)])
    out_dir = raw.get("out_dir", "out")
    if not isinstance(out_dir, str) or not out_dir:
        raise ConfigError(f"out_dir must be a non-empty string path, got {out_dir!r}")
    try:
        data_section = DataSection(**data)
        sample_section = SampleSection(**sample)
    except TypeError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(data_section.tokenizer, str):
        raise ConfigError(f"[data] tokenizer must be a string, got {data_section.tokenizer!r}")
    return RunConfig(
        model=model, data=data_section, train=train, sample=sample_section, out_dir=out_dir
    )


def _load_tokenizer(spec: str, text: str | None) -> Any:
    from gptlab import tokenizers

    if spec == "gpt2":
        return tokenizers.get_tokenizer("gpt2")
    if spec == "char":
        if text is None:
            raise ConfigError("tokenizer = 'char' needs the training text")
        return tokenizers.CharTokenizer.from_text(text)
    path = pathlib.Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"[data] tokenizer {spec!r} is neither 'gpt2', 'char' nor an existing BPETokenizer JSON file"
        )
    return tokenizers.BPETokenizer.load(path)


def _vocab_size(tokenizer: Any) -> int:
    return int(tokenizer.n_vocab if hasattr(tokenizer, "n_vocab") else tokenizer.vocab_size)


def _read_text(data: DataSection) -> str:
    from gptlab.data import load_corpus

    if data.text_file is not None:
        path = pathlib.Path(data.text_file)
        if not path.is_file():
            raise ConfigError(f"[data] text_file {str(path)!r} not found")
        return path.read_text(encoding="utf-8")
    if data.corpus is None:
        raise ConfigError("[data] needs corpus = 'shakespeare' or text_file = 'path.txt'")
    return load_corpus(data.corpus).text


@dataclass
class Run:
    """Everything ``train`` needs, built from a RunConfig."""

    model: Any
    train_ids: Any
    val_ids: Any
    train_config: Any
    tokenizer: Any


def build_run(run: RunConfig, *, seed_model: bool = True) -> Run:
    """Tokenize the data, split it, build the model and the TrainConfig of a run file."""
    import torch

    from gptlab.data import train_val_split
    from gptlab.model import GPT, GPTConfig
    from gptlab.tokenizers import encode_plain
    from gptlab.train import TrainConfig
    from gptlab.utils import seed_everything

    text = _read_text(run.data)
    tokenizer = _load_tokenizer(run.data.tokenizer, text)
    ids = torch.tensor(encode_plain(tokenizer, text), dtype=torch.long)
    train_ids, val_ids = train_val_split(ids, run.data.val_fraction)

    fields = dict(run.model)
    fields.setdefault("vocab_size", _vocab_size(tokenizer))
    if fields["vocab_size"] < _vocab_size(tokenizer):
        raise ConfigError(
            f"[model] vocab_size {fields['vocab_size']} is smaller than the tokenizer's "
            f"{_vocab_size(tokenizer)}; remove vocab_size to use the tokenizer's"
        )
    preset = fields.pop("preset", None)
    model_config = GPTConfig.preset(preset, **fields) if preset is not None else GPTConfig(**fields)

    train_fields = dict(run.train)
    train_fields.setdefault("block_size", model_config.block_size)
    train_fields["checkpoint_dir"] = run.out_dir
    train_config = TrainConfig.from_dict(train_fields)
    if seed_model:
        seed_everything(train_config.seed)  # same initial weights on every rank and every run
    return Run(GPT(model_config), train_ids, val_ids, train_config, tokenizer)


def _sample_fn(run: RunConfig, tokenizer: Any) -> Any:
    import torch

    from gptlab.sampling import generate
    from gptlab.tokenizers import encode_plain

    prompt = encode_plain(tokenizer, run.sample.prompt)

    def sample(model: Any, step: int) -> str:
        device = next(model.parameters()).device
        idx = torch.tensor([prompt[-model.config.block_size :]], dtype=torch.long, device=device)
        out = generate(
            model,
            idx,
            run.sample.max_new_tokens,
            temperature=run.sample.temperature,
            top_k=run.sample.top_k,
            generator=torch.Generator(device=device).manual_seed(step),
        )
        return tokenizer.decode(out[0].tolist())

    return sample


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    run = load_run_config(args.config)
    from gptlab.checkpoint import find_checkpoint, prepare_checkpoint_dir
    from gptlab.train import train

    if args.allow_config_change and not args.resume:
        raise ConfigError("--allow-config-change only applies to --resume; add --resume or drop it")
    out = pathlib.Path(run.out_dir)
    if int(os.environ.get("RANK", "0")) == 0:  # one process checks (and recovers) the folder
        prepare_checkpoint_dir(out)  # refuses a file or a folder of other files, before any work
    has_checkpoint = find_checkpoint(out) is not None  # also one a crashed save left at .NAME.old
    if args.resume and not has_checkpoint:
        raise ConfigError(
            f"--resume given but {str(out)!r} holds no checkpoint; drop --resume to start fresh"
        )
    if has_checkpoint and not (args.resume or args.overwrite):
        raise ConfigError(
            f"{str(out)!r} already holds a checkpoint; pass --resume to continue it or --overwrite to start over"
        )
    built = build_run(run)
    rank = int(os.environ.get("RANK", "0"))
    history = train(
        built.model,
        built.train_ids,
        built.val_ids,
        built.train_config,
        resume_from=out if args.resume else None,
        allow_config_change=args.allow_config_change,
        sample_fn=_sample_fn(run, built.tokenizer) if built.train_config.sample_interval else None,
        tokenizer=built.tokenizer,
    )
    dump = os.environ.get(DUMP_WEIGHTS_ENV)
    if dump:
        from safetensors.torch import save_file

        pathlib.Path(dump).mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in built.model.state_dict().items()
            if k != "lm_head.weight"
        }
        save_file(state, str(pathlib.Path(dump) / f"rank{rank}.safetensors"))
    if rank == 0:
        summary = f"trained to step {history.steps[-1] if history.steps else 0}"
        if history.train_loss:
            summary += f": train loss {history.train_loss[-1]:.4f}"
        if history.val_loss:
            summary += f", val loss {history.val_loss[-1]:.4f} (perplexity {history.val_perplexity[-1]:.2f})"
        print(summary)
        print(f"checkpoint: {out}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from gptlab.sampling import decode_stream, generate, stream
    from gptlab.utils import get_device

    if args.stream and args.num_return_sequences != 1:
        raise ConfigError("--stream prints one sequence; use --num-return-sequences 1 with it")
    device = get_device(None if args.device == "auto" else args.device)
    model, tokenizer, prompt, eos = _generation_inputs(args, device)
    window = model.config.block_size
    if len(prompt) > window:  # the model cannot see further back than its window
        if args.chat:  # cropping a chat prompt would cut the template's opening markers
            raise ConfigError(
                f"the chat prompt is {len(prompt):,} tokens, longer than the model's window of "
                f"{window:,}; shorten --prompt"
            )
        print(
            f"gptlab generate: note: the prompt is {len(prompt):,} tokens, longer than the "
            f"model's window; it was cropped to its last {window:,} tokens",
            file=sys.stderr,
        )
        prompt = prompt[-window:]
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed if args.seed is not None else torch.seed())
    options = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        eos_token_id=eos,
        generator=generator,
    )
    if args.stream:
        if not args.chat:  # a continuation is printed after its prompt; a reply alone
            sys.stdout.write(tokenizer.decode(prompt))  # encoded text: ends on a whole character
        # Byte-safe: a character split across tokens is printed once its last byte arrives.
        tokens = stream(model, idx, args.max_new_tokens, **options)
        if eos is not None:
            tokens = itertools.takewhile(lambda token: token != eos, tokens)
        for piece in decode_stream(tokenizer, tokens):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    out = generate(
        model, idx, args.max_new_tokens, num_return_sequences=args.num_return_sequences, **options
    )
    for i, row in enumerate(out.tolist()):
        if args.num_return_sequences > 1:
            print(f"--- sequence {i + 1} ---")
        if args.chat:  # the reply only, up to the end-of-turn token
            row = row[len(prompt) :]
            row = row[: row.index(eos)] if eos in row else row
        print(tokenizer.decode(row))
    return 0


def _generation_inputs(args: argparse.Namespace, device: Any) -> tuple[Any, Any, list[int], Any]:
    """Model, tokenizer, prompt ids and end-of-reply id (``None``: none) for ``generate``."""
    from gptlab.serve.backend import Message, load_backend
    from gptlab.tokenizers import encode_plain

    if args.checkpoint is not None:
        from gptlab.train import load_model, load_tokenizer

        if args.chat:
            raise ConfigError("--chat needs --model (a name or folder with a chat template)")
        model = load_model(args.checkpoint, device=device)
        tokenizer = load_tokenizer(args.checkpoint)
        prompt, eos = encode_plain(tokenizer, args.prompt), None
    else:
        backend = load_backend(args.model, device=str(device))
        model, tokenizer = backend.model, backend.tokenizer
        if args.chat:  # one user turn in the model's own template; stop at the end of the turn
            prompt = backend.encode_chat([Message("user", args.prompt)])
            eos = backend.stop_token_ids[0]
        else:
            prompt, eos = encode_plain(tokenizer, args.prompt), None
    if not prompt:
        raise ConfigError("the prompt encodes to no tokens; pass a non-empty --prompt")
    return model, tokenizer, prompt, eos


# --------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; larger seeds overflow
MAX_NEW_TOKENS = 100_000  # a sanity bound: far beyond any window, and hours of sampling on a CPU


def _int_in(text: str, low: int, high: int | None) -> int:
    """Parse an integer argument in ``low..high`` (``high=None``: no upper bound)."""
    wanted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


def _positive_int(text: str) -> int:
    return _int_in(text, 1, None)


def _seed(text: str) -> int:
    return _int_in(text, 0, SEED_MAX)


def _max_new_tokens(text: str) -> int:
    return _int_in(text, 1, MAX_NEW_TOKENS)


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="gptlab",
        description="GPT Lab: train a small GPT from a TOML run file, or generate text from a checkpoint.",
        epilog="Run 'gptlab COMMAND --help' for the options of each command.",
        formatter_class=formatter,
    )
    from gptlab import __version__

    parser.add_argument("--version", action="version", version=f"gptlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train a GPT as described by a TOML run file",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=formatter,
    )
    train.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="the TOML run file ([model], [data], [train], [sample], out_dir)",
    )
    group = train.add_mutually_exclusive_group()
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the checkpoint in out_dir exactly where it stopped",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="start from scratch even if out_dir already holds a checkpoint",
    )
    train.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue although [train] differs from the checkpoint's (the "
        "differences are listed); without it such a resume is refused",
    )
    train.set_defaults(func=_cmd_train)

    gen = commands.add_parser(
        "generate",
        help="continue a prompt with a named model or a trained checkpoint",
        description="Continue --prompt with a named model (--model smollm2-135m-instruct, "
        "--model reference) or a checkpoint written by 'gptlab train', decoding with the model's "
        "own tokenizer. --chat sends the prompt as one user message in the model's chat template "
        "and prints the reply.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", metavar="DIR", help="checkpoint directory (a run's out_dir)"
    )
    source.add_argument(
        "--model",
        metavar="NAME|DIR",
        help="'smollm2-135m-instruct', 'reference' or a checkpoint folder",
    )
    gen.add_argument(
        "--chat",
        action="store_true",
        help="wrap the prompt as a user message in the model's chat template; print the reply",
    )
    gen.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    gen.add_argument(
        "--max-new-tokens",
        type=_max_new_tokens,
        default=200,
        metavar="N",
        help=f"tokens to add (1 to {MAX_NEW_TOKENS:,})",
    )
    gen.add_argument(
        "--temperature",
        type=_non_negative_float,
        default=1.0,
        metavar="T",
        help="divide logits by T: <1 sharper, >1 more random, 0 greedy (always the most likely token)",
    )
    gen.add_argument(
        "--top-k",
        type=_positive_int,
        default=None,
        metavar="K",
        help="sample only from the K most likely tokens",
    )
    gen.add_argument(
        "--top-p",
        type=float,
        default=None,
        metavar="P",
        help="sample from the smallest set of tokens whose probability reaches P (nucleus)",
    )
    gen.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="make tokens already in the text R times less likely (1.0 = off, 1.2 = typical)",
    )
    gen.add_argument(
        "--num-return-sequences",
        type=_positive_int,
        default=1,
        metavar="N",
        help="independent continuations to print",
    )
    gen.add_argument(
        "--seed",
        type=_seed,
        default=None,
        metavar="S",
        help="seed the sampler to reproduce an output, 0 to 2**63-1 (default: random)",
    )
    gen.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    gen.add_argument(
        "--device", default="cpu", metavar="DEV", help="'cpu', 'cuda', 'mps' or 'auto'"
    )
    gen.set_defaults(func=_cmd_generate)

    from gptlab.serve import add_arguments as add_serve_arguments
    from gptlab.serve import run as run_serve

    serve = commands.add_parser(
        "serve",
        help="serve a model behind an OpenAI-compatible HTTP API, with a chat page",
        description=(
            "Serve a model at http://HOST:PORT/v1 (chat/completions, completions, models) and "
            "a chat page at /. Listens on 127.0.0.1 unless told otherwise; any other address "
            "needs --api-key."
        ),
    )
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)

    chat = commands.add_parser(
        "chat",
        help="chat with a model in the terminal (streamed; /reset, /system TEXT, /quit)",
        description=(
            "Chat with a model in the terminal. The reply streams as it is written; the "
            "history is kept inside the context window (the oldest exchanges are dropped, with "
            "a notice). Commands: /reset, /system TEXT, /quit."
        ),
    )
    chat.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        metavar="NAME|DIR",
        help="'smollm2-135m-instruct' (default), 'reference' or a checkpoint folder",
    )
    chat.add_argument("--system", default=None, metavar="TEXT", help="the system prompt")
    chat.add_argument("--max-new-tokens", type=_max_new_tokens, default=256, metavar="N")
    chat.add_argument(
        "--temperature", type=_non_negative_float, default=0.0, help="0 (default) is greedy"
    )
    chat.add_argument("--seed", type=_seed, default=0)
    chat.set_defaults(func=_cmd_chat)

    ev = commands.add_parser(
        "eval",
        help="evaluate a model on a suite and write a JSON + Markdown report card",
        description=(
            "Evaluate a model on a suite (code pass@1 in a sandbox, multiple choice, "
            "Shakespeare cloze, bits per byte; each with a 95%% bootstrap interval) and write "
            "OUT.json and OUT.md."
        ),
    )
    ev.add_argument(
        "--model",
        required=True,
        metavar="NAME|DIR",
        help="'reference', 'smollm2-135m-instruct' or a checkpoint folder written by 'train'",
    )
    ev.add_argument(
        "--suite",
        default="book",
        help=(
            "'book' (default), 'card' (the report card's suite: 'book' with bits per byte on "
            "the first 20,000 characters of each held-out play; recipes/report_card.py) or "
            "'smoke' (seconds)"
        ),
    )
    ev.add_argument("--out", required=True, metavar="PATH", help="report path without suffix")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing report")
    ev.add_argument("--seed", type=_seed, default=0, help="seed of the bootstrap intervals")
    ev.set_defaults(func=_cmd_eval)
    return parser


def _load_named_model(spec: str) -> tuple[Any, Any]:
    """``reference``, a pretrained name (``smollm2-135m-instruct``) or a checkpoint folder."""
    from gptlab.serve.backend import PRETRAINED_NAMES, REFERENCE_NAMES

    if spec in REFERENCE_NAMES:
        from gptlab.reference import load_reference_model

        return load_reference_model()
    if spec in PRETRAINED_NAMES:
        from gptlab.pretrained import load_pretrained

        return load_pretrained(spec)
    from gptlab.checkpoint import load_model, load_tokenizer

    path = pathlib.Path(spec)
    if not (path / "meta.json").is_file():
        names = ", ".join((*REFERENCE_NAMES, *PRETRAINED_NAMES))
        raise ValueError(
            f"--model {spec!r} is neither a known name ({names}) nor a checkpoint folder with a "
            "meta.json; pass one of those names or the out_dir of a 'gptlab train' run"
        )
    return load_model(path).eval(), load_tokenizer(path)


def _cmd_chat(args: argparse.Namespace) -> int:
    from gptlab.serve.backend import load_backend
    from gptlab.serve.terminal import TerminalChat

    backend = load_backend(args.model)
    session = TerminalChat(
        backend,
        system=args.system,
        max_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    print(f"chatting with {backend.model_id}; /reset, /system TEXT, /quit", file=sys.stderr)
    session.run()
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from gptlab.evaluate import evaluate_suite, report_markdown, write_report

    base = pathlib.Path(args.out)
    base = base.with_suffix("") if base.suffix in (".json", ".md") else base
    existing = [
        str(p) for p in (base.parent / f"{base.name}.json", base.parent / f"{base.name}.md")
    ]
    existing = [p for p in existing if pathlib.Path(p).exists()]
    if existing and not args.overwrite:  # before minutes of evaluation, not after
        raise FileExistsError(
            f"{', '.join(existing)} already exists; pass --overwrite or another --out"
        )
    model, tokenizer = _load_named_model(args.model)
    report = evaluate_suite(model, tokenizer, args.suite, seed=args.seed)
    report["model"]["name"] = args.model
    json_path, md_path = write_report(report, args.out, overwrite=args.overwrite)
    print(report_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


# --------------------------------------------------------------------------------------------
# Errors a user can fix: one line each, with the fix
# --------------------------------------------------------------------------------------------

_OUT_OF_MEMORY = ("can't allocate memory", "DefaultCPUAllocator", "out of memory")


def _cache_root() -> pathlib.Path:
    """The folder gptlab.utils.cache_dir() uses, worked out without creating it."""
    root = os.environ.get("GPTLAB_CACHE")
    return pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "gptlab"


def _os_error(err: OSError) -> str:
    path = pathlib.Path(os.fsdecode(err.filename)) if err.filename is not None else None
    said = f"{err.strerror}: {path}" if err.strerror and path else " ".join(str(err).split())
    root = _cache_root()
    if path is not None and (path == root or root in path.parents or path in root.parents):
        return (
            f"{said}. gptlab keeps downloads and converted data in {root}, which it cannot "
            "create or write; set GPTLAB_CACHE to a folder you can write, e.g. "
            "`export GPTLAB_CACHE=$HOME/gptlab-cache`, and run again"
        )
    return f"{said}; check that the path exists, is of the right kind and is writable"


def _user_error(err: Exception) -> str | None:
    """The one-line message for an error the user can fix; None for a bug (keep its traceback)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError) and any(m in str(err) for m in _OUT_OF_MEMORY)
    ):
        return (
            f"not enough memory ({text}); use a smaller model, batch_size or block_size, fewer "
            "--max-new-tokens, or a machine with more memory"
        )
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
        return _os_error(err)
    safetensors = sys.modules.get("safetensors")  # only loaded if a weights file was read
    if safetensors is not None and isinstance(err, safetensors.SafetensorError):
        return (
            f"cannot read a safetensors weights file ({text}): it is damaged or not a "
            "safetensors file; copy the checkpoint again or train it anew"
        )
    archives = sys.modules.get("gptlab.data.archives")
    data_errors = (
        (archives.DownloadError, archives.ChecksumError, archives.UnsafeArchiveError)
        if archives is not None
        else ()
    )
    if isinstance(err, (ValueError, TypeError, FileNotFoundError, *data_errors)):
        return text
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gptlab`` and ``python -m gptlab``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = _user_error(err)
        if message is None or os.environ.get("GPTLAB_DEBUG"):  # a bug, or asked for: traceback
            raise
        print(f"gptlab {args.command}: error: {message}", file=sys.stderr)
        return 2
