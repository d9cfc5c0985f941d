"""GGUF, llama.cpp's single-file model format, read by hand: header, metadata, tensors, quants.

A GGUF file is a little-endian byte stream::

    "GGUF" | version u32 | tensor count u64 | metadata count u64
    metadata: key (u64 length + UTF-8) | value type u32 | value      (arrays: type u32, count u64)
    tensor infos: name | n_dims u32 | dims u64 x n_dims (innermost first) | ggml type u32 | offset u64
    padding to ``general.alignment`` (32) | tensor data, each tensor at an aligned offset

Weights may be quantised in blocks of 32 values sharing a float16 scale: ``Q8_0`` stores int8
values (``x = d * q``), ``Q4_0`` 4-bit ones (``x = d * (q - 8)``), ``Q4_1`` 4-bit ones with an
offset (``x = d * q + m``). :func:`dequantize` expands them with NumPy, a whole tensor at once.
:func:`load_gguf` turns a Llama-architecture file into a :class:`gptlab.llama.Llama` and its
tokenizer into a :class:`gptlab.BPETokenizer`.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import pathlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gptlab.llama import Llama, LlamaConfig, empty_llama
from gptlab.tokenizers import KNOWN_PATTERNS, BPETokenizer

__all__ = [
    "GGML_TYPES",
    "GGUFError",
    "GGUFFile",
    "GGUFTensor",
    "dequantize",
    "gguf_tokenizer",
    "llama_config_from_gguf",
    "load_gguf",
    "read_gguf",
]

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # ggml tensors have at most 4 dimensions


class GGUFError(ValueError):
    """The bytes are not a GGUF file we can read: wrong magic, truncated, inconsistent sizes."""


@dataclass(frozen=True)
class _QuantType:
    name: str
    block_size: int  # values per block
    block_bytes: int  # bytes per block


#: ggml type id -> layout, for the types :func:`dequantize` understands.
GGML_TYPES: dict[int, _QuantType] = {
    0: _QuantType("F32", 1, 4),
    1: _QuantType("F16", 1, 2),
    2: _QuantType("Q4_0", 32, 18),  # f16 scale + 16 bytes of 4-bit values
    3: _QuantType("Q4_1", 32, 20),  # f16 scale + f16 minimum + 16 bytes of 4-bit values
    8: _QuantType("Q8_0", 32, 34),  # f16 scale + 32 int8 values
    30: _QuantType("BF16", 1, 2),
}

# Metadata value types: id -> (struct format, size) for the fixed-size scalars.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    """Where one tensor lives: ``shape`` in PyTorch order (outermost first), ggml type, bytes."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # absolute, from the start of the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, repr=False)
class GGUFFile:
    """A parsed GGUF file: metadata, tensor table, and the raw bytes the tensors point into."""

    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    data: memoryview

    def tensor(self, name: str) -> np.ndarray:
        """Dequantised float32 array of tensor ``name``, shaped like its PyTorch weight."""
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(
                f"no tensor {name!r} in this GGUF file; it has e.g. {list(self.tensors)[:5]}"
            )
        raw = np.frombuffer(self.data, dtype=np.uint8, count=info.n_bytes, offset=info.offset)
        return dequantize(raw, info.ggml_type, info.n_elements).reshape(info.shape)

    def __repr__(self) -> str:
        arch = self.metadata.get("general.architecture")
        return (
            f"GGUFFile(version={self.version}, architecture={arch!r}, tensors={len(self.tensors)})"
        )


# ------------------------------------------------------------------------------ reading


class _Reader:
    """A cursor over the bytes that refuses to read past their end."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise GGUFError(
                f"the file is truncated: reading {what} needs {n:,} bytes at offset {self.pos:,} "
                f"but the file has {len(self.data):,}; download it again"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def scalar(self, fmt: str, size: int, what: str) -> Any:
        return struct.unpack(fmt, self.take(size, what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", 8, f"the length of {what}")
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFError(f"{what} at offset {self.pos - n:,} is not UTF-8 ({exc})") from None

    def value(self, kind: int, what: str) -> Any:
        if kind in _SCALARS:
            return self.scalar(*_SCALARS[kind], what)
        if kind == _STRING:
            return self.string(what)
        if kind == _ARRAY:
            item_kind = self.scalar("<I", 4, f"the item type of {what}")
            count = self.scalar("<Q", 8, f"the length of {what}")
            if count > len(self.data) - self.pos:  # every item takes at least one byte
                raise GGUFError(f"{what} claims {count:,} items, more than the file could hold")
            if item_kind in _SCALARS:  # fixed-size items: one vectorised read
                fmt, size = _SCALARS[item_kind]
                raw = self.take(count * size, what)
                return np.frombuffer(raw, dtype=np.dtype(fmt)).tolist()
            return [self.value(item_kind, f"item {i} of {what}") for i in range(count)]
        raise GGUFError(f"{what} has unknown value type {kind}; is this really a GGUF file?")


def _open_bytes(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> memoryview:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return memoryview(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or bytes, got {type(source).__name__}")
    path = pathlib.Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {str(path)!r}; check the path")
    with path.open("rb") as handle:
        if path.stat().st_size == 0:
            raise GGUFError(f"{str(path)!r} is empty; download it again")
        return memoryview(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))


def read_gguf(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> GGUFFile:
    """Parse a GGUF file (a path, memory-mapped, or its bytes) and check it is self-consistent.

    Checks the magic and version, that every length fits in the file, that the tensors have
    known types, whole blocks, aligned offsets and data inside the file, and that no two
    tensors overlap. Raises :class:`GGUFError` saying what is wrong.
    """
    data = _open_bytes(source)
    r = _Reader(data)
    magic = bytes(r.take(4, "the magic number"))
    if magic != MAGIC:
        raise GGUFError(f"not a GGUF file: it starts with {magic!r}, not {MAGIC!r}")
    version = r.scalar("<I", 4, "the version")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"GGUF version {version} is not supported (only {SUPPORTED_VERSIONS})")
    n_tensors = r.scalar("<Q", 8, "the tensor count")
    n_kv = r.scalar("<Q", 8, "the metadata count")
    if n_tensors > len(data) or n_kv > len(data):
        raise GGUFError(f"the header claims {n_tensors:,} tensors and {n_kv:,} metadata entries")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key {i}")
        kind = r.scalar("<I", 4, f"the type of {key!r}")
        metadata[key] = r.value(kind, f"metadata {key!r}")
    infos = [_tensor_info(r, i) for i in range(n_tensors)]
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
        raise GGUFError(f"general.alignment must be a power of two, got {alignment!r}")
    start = -(-r.pos // alignment) * alignment  # the data section begins at the next boundary
    tensors: dict[str, GGUFTensor] = {}
    end_of_previous = start
    for name, shape, kind, rel in sorted(infos, key=lambda t: t[3]):
        if name in tensors:
            raise GGUFError(f"tensor {name!r} appears twice")
        n_bytes = _tensor_bytes(name, shape, kind)
        offset = start + rel
        if rel % alignment or offset < end_of_previous:
            raise GGUFError(f"tensor {name!r} has a misaligned or overlapping offset {rel:,}")
        if offset + n_bytes > len(data):
            raise GGUFError(
                f"the file is truncated: tensor {name!r} needs bytes {offset:,}..{offset + n_bytes:,} "
                f"but the file has {len(data):,}; download it again"
            )
        tensors[name] = GGUFTensor(name, shape, kind, offset, n_bytes)
        end_of_previous = offset + n_bytes
    return GGUFFile(version, metadata, tensors, data)


def _tensor_info(r: _Reader, i: int) -> tuple[str, tuple[int, ...], int, int]:
    name = r.string(f"the name of tensor {i}")
    n_dims = r.scalar("<I", 4, f"the rank of {name!r}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise GGUFError(f"tensor {name!r} has {n_dims} dimensions; ggml allows 1 to {_MAX_DIMS}")
    dims = [r.scalar("<Q", 8, f"the shape of {name!r}") for _ in range(n_dims)]
    kind = r.scalar("<I", 4, f"the type of {name!r}")
    offset = r.scalar("<Q", 8, f"the offset of {name!r}")
    if any(d < 1 for d in dims):
        raise GGUFError(f"tensor {name!r} has a zero dimension: {dims}")
    return name, tuple(reversed(dims)), kind, offset  # ggml lists the innermost dim first


def _tensor_bytes(name: str, shape: tuple[int, ...], kind: int) -> int:
    layout = GGML_TYPES.get(kind)
    if layout is None:
        raise GGUFError(
            f"tensor {name!r} has ggml type {kind}, which gptlab cannot dequantise; supported: "
            f"{', '.join(t.name for t in GGML_TYPES.values())}"
        )
    if shape[-1] % layout.block_size:
        raise GGUFError(f"tensor {name!r} rows ({shape[-1]}) are not whole {layout.name} blocks")
    return math.prod(shape) // layout.block_size * layout.block_bytes


# ------------------------------------------------------------------------------ dequantising


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 stored at byte ``start`` of each block, as a float32 column ``(n_blocks, 1)``."""
    return blocks[:, start : start + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes per block -> 32 values: the low nibbles are values 0..15, the high ones 16..31."""
    return np.concatenate((qs & 0x0F, qs >> 4), axis=1).astype(np.float32)


def _q8_0(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks, 0) * blocks[:, 2:].view(np.int8).astype(np.float32)


def _q4_0(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks, 0) * (_nibbles(blocks[:, 2:]) - 8.0)


def _q4_1(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks, 0) * _nibbles(blocks[:, 4:]) + _f16(blocks, 2)


_BLOCK_DECODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q8_0": _q8_0,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
}


def dequantize(raw: np.ndarray, ggml_type: int, n_elements: int) -> np.ndarray:
    """Expand the bytes ``raw`` (uint8) of a tensor of ``ggml_type`` into ``n_elements`` float32s."""
    layout = GGML_TYPES.get(ggml_type)
    if layout is None:
        raise GGUFError(f"ggml type {ggml_type} is not supported; supported: {sorted(GGML_TYPES)}")
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    expected = -(-n_elements // layout.block_size) * layout.block_bytes
    if n_elements % layout.block_size or raw.size != expected:
        raise GGUFError(
            f"{n_elements} {layout.name} values need {expected} bytes in whole blocks of "
            f"{layout.block_size}, got {raw.size}"
        )
    if layout.name == "F32":
        return raw.view(np.float32).copy()
    if layout.name == "F16":
        return raw.view(np.float16).astype(np.float32)
    if layout.name == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    blocks = raw.reshape(-1, layout.block_bytes)
    return _BLOCK_DECODERS[layout.name](blocks).reshape(-1)


# ------------------------------------------------------------------------------ Llama


def llama_config_from_gguf(file: GGUFFile) -> LlamaConfig:
    """The :class:`LlamaConfig` a GGUF file's metadata describes (``general.architecture`` llama)."""
    meta = file.metadata
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"this GGUF holds a {arch!r} model; gptlab reads only 'llama' ones")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise GGUFError(f"the metadata lacks llama.{key}; the file is incomplete")
        return value

    if meta.get("llama.rope.scaling.type", "none") not in ("none", "linear") or (
        meta.get("llama.rope.scaling.factor", 1.0) != 1.0 or "rope_freqs.weight" in file.tensors
    ):
        raise GGUFError("this model uses RoPE scaling, which gptlab's Llama does not implement")
    n_head = get("attention.head_count")
    n_embd = get("embedding_length")
    tokens = meta.get("tokenizer.ggml.tokens")
    config = LlamaConfig(
        vocab_size=get("vocab_size", len(tokens) if tokens is not None else None),
        block_size=get("context_length"),
        n_layer=get("block_count"),
        n_head=n_head,
        n_kv_head=get("attention.head_count_kv", n_head),
        n_embd=n_embd,
        intermediate_size=get("feed_forward_length"),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in file.tensors,
    )
    if get("rope.dimension_count", config.head_dim) != config.head_dim:
        raise GGUFError("RoPE rotates only part of each head here; gptlab rotates whole heads")
    return config


def _gguf_names(config: LlamaConfig) -> dict[str, str]:
    """Our (Hugging Face's) parameter name -> the GGUF tensor name that holds it."""
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(config.n_layer):
        for ours, theirs in per_layer.items():
            names[f"model.layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    return names


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q/k projection rows.

    Hugging Face's RoPE rotates feature ``i`` with ``i + hs/2`` ("rotate half"); llama.cpp
    rotates adjacent pairs ``(2i, 2i + 1)``, so its converter interleaves each head's rows. This
    is the inverse: per head, rows ``[r0, r(hs/2), r1, r(hs/2 + 1), ...]`` go back to
    ``[r0, r1, ..., r(hs/2), ...]``.
    """
    out_features = weight.shape[0]
    if out_features % (2 * n_heads):
        raise ValueError(f"{out_features} rows cannot be {n_heads} heads of even size")
    half = out_features // n_heads // 2
    return weight.reshape(n_heads, half, 2, -1).transpose(1, 2).reshape(weight.shape)


def load_gguf(
    source: str | os.PathLike[str] | bytes | GGUFFile,
    *,
    dtype: torch.dtype = torch.float32,
    check_size: Callable[[LlamaConfig, torch.dtype], None] | None = None,
) -> Llama:
    """Build a :class:`Llama` (eval mode) from a GGUF file, dequantising every tensor to ``dtype``.

    ``check_size(config, dtype)`` runs before the model is built, so a file whose metadata
    describes an absurd model is refused before any memory is taken.
    """
    file = source if isinstance(source, GGUFFile) else read_gguf(source)
    config = llama_config_from_gguf(file)
    if check_size is not None:
        check_size(config, dtype)
    names = _gguf_names(config)
    extra = sorted(set(file.tensors) - set(names.values()))
    missing = sorted(set(names.values()) - set(file.tensors))
    if missing or extra:
        raise GGUFError(
            f"the tensors do not match a {config.n_layer}-layer Llama: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    model = empty_llama(config, dtype)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for ours, theirs in names.items():
            weight = torch.from_numpy(file.tensor(theirs))
            if ours.endswith("q_proj.weight"):
                weight = unpermute_rope_rows(weight, config.n_head)
            elif ours.endswith("k_proj.weight"):
                weight = unpermute_rope_rows(weight, config.n_kv_head)
            if weight.shape != params[ours].shape:
                raise GGUFError(
                    f"tensor {theirs!r} has shape {tuple(weight.shape)}; the config implies "
                    f"{tuple(params[ours].shape)} for {ours!r}"
                )
            params[ours].copy_(weight)
    return model.eval()


# ------------------------------------------------------------------------------ tokenizer

_NORMAL, _CONTROL = 1, 3  # llama.cpp token types; others (user-defined, byte, unused) refused


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: each of 256 printable characters -> its byte.

    Printable bytes stand for themselves; the others (space, control bytes) are shifted to
    code points 256 and up, so ``" the"`` is stored as ``"Ġthe"``.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping, shift = {}, 0
    for b in range(256):
        if b in printable:
            mapping[chr(b)] = b
        else:
            mapping[chr(256 + shift)] = b
            shift += 1
    return mapping


def _token_bytes(token: str, token_id: int) -> bytes:
    table = _unicode_to_byte()
    try:
        return bytes(table[ch] for ch in token)
    except KeyError:
        raise GGUFError(
            f"token {token_id} ({token!r}) has a character outside GPT-2's byte-level alphabet"
        ) from None


def gguf_tokenizer(file: GGUFFile, pattern: str | None = None) -> BPETokenizer:
    """The byte-level BPE tokenizer stored in a GGUF file's metadata, as a :class:`BPETokenizer`.

    Control tokens (``<|im_start|>`` ...) become special tokens. ``pattern`` is the
    pre-tokenizer; by default it is looked up from ``tokenizer.ggml.pre`` ("smollm" and "gpt2"
    are known). Bytes the vocabulary lacks (SmolLM2 never saw 21 of the 256, e.g. ``0x04``) get
    ids after the model's vocabulary, so every text still encodes: the model refuses those ids.
    """
    meta = file.metadata
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise GGUFError(
            f"tokenizer.ggml.model is {meta.get('tokenizer.ggml.model')!r}; only byte-level BPE "
            "('gpt2') tokenizers can become a BPETokenizer"
        )
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    if pattern is None:
        known = {"smollm": KNOWN_PATTERNS["smollm2"], "gpt2": KNOWN_PATTERNS["gpt2"]}
        if pre not in known:
            raise GGUFError(
                f"unknown pre-tokenizer {pre!r}; pass its regex as pattern=... (known: {sorted(known)})"
            )
        pattern = known[pre]
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [_NORMAL] * len(tokens))
    vocab: dict[int, bytes] = {}
    specials: dict[str, int] = {}
    for i, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind == _CONTROL:
            specials[token] = i
        elif kind == _NORMAL:
            vocab[i] = _token_bytes(token, i)
        else:
            raise GGUFError(f"token {i} ({token!r}) has type {kind}, which gptlab cannot map")
    present = set(vocab.values())
    unseen = [bytes([b]) for b in range(256) if bytes([b]) not in present]
    for k, byte in enumerate(unseen):  # ids past the model's vocabulary
        vocab[len(tokens) + k] = byte
    merges = []
    for line in meta.get("tokenizer.ggml.merges", []):
        parts = line.split(" ")
        if len(parts) != 2:
            raise GGUFError(f"merge {line!r} is not two tokens separated by one space")
        merges.append((_token_bytes(parts[0], -1), _token_bytes(parts[1], -1)))
    return BPETokenizer(vocab, merges, specials, pattern)
