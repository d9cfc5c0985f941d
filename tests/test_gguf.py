"""gptlab's own GGUF reader against the reference implementations: the PyPI ``gguf`` package
(writer and dequantizer, a test-only dependency) block by block, and transformers' GGUF loader
on a tiny quantised Llama, including llama.cpp's q/k row permutation. Offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFWriter, quants  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from gptlab.gguf import (  # noqa: E402
    GGUFError,
    dequantize,
    gguf_tokenizer,
    load_gguf,
    read_gguf,
    unpermute_rope_rows,
)

TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i s", "Ġ is"]


@pytest.fixture(scope="module", autouse=True)
def quiet_and_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()
    torch.set_num_threads(before)


def _write(path, arch, tensors, metadata=None):
    """Write a GGUF file with the reference writer: tensors {name: (float array, type)}."""
    writer = GGUFWriter(str(path), arch)
    for fill in metadata or ():
        fill(writer)
    for name, (array, qtype) in tensors.items():
        if qtype == Q.F32:
            writer.add_tensor(name, array.astype(np.float32))
        elif qtype == Q.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(
                name, quants.quantize(array.astype(np.float32), qtype), raw_dtype=qtype
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_equals_reference_block_by_block(tmp_path, qtype):
    data = _random((3, 64), seed=int(qtype)) * 3
    path = _write(tmp_path / "t.gguf", "test", {"w": (data, qtype)})
    file = read_gguf(path)
    info = file.tensors["w"]
    assert info.shape == (3, 64) and info.ggml_type == int(qtype)
    raw = np.frombuffer(file.data, np.uint8, count=info.n_bytes, offset=info.offset)
    reference = quants.dequantize(raw.reshape(3, -1), qtype).reshape(-1)
    np.testing.assert_array_equal(file.tensor("w").reshape(-1), reference)
    block_values, block_bytes = quants.GGML_QUANT_SIZES[qtype]
    for b in range(raw.size // block_bytes):
        one = raw[b * block_bytes : (b + 1) * block_bytes]
        np.testing.assert_array_equal(
            dequantize(one, int(qtype), block_values),
            reference[b * block_values : (b + 1) * block_values],
        )


def test_metadata_types_round_trip(tmp_path):
    fills = [
        lambda w: w.add_uint32("test.u32", 7),
        lambda w: w.add_int64("test.i64", -3),
        lambda w: w.add_float32("test.f32", 0.5),
        lambda w: w.add_bool("test.flag", True),
        lambda w: w.add_string("test.name", "héllo"),
        lambda w: w.add_array("test.ints", [1, 2, 3]),
        lambda w: w.add_array("test.strings", ["a", "bc", ""]),
    ]
    path = _write(tmp_path / "m.gguf", "test", {"w": (_random((2, 32), 0), Q.F32)}, fills)
    meta = read_gguf(path).metadata
    assert meta["general.architecture"] == "test"
    assert (meta["test.u32"], meta["test.i64"], meta["test.f32"]) == (7, -3, 0.5)
    assert meta["test.flag"] is True and meta["test.name"] == "héllo"
    assert meta["test.ints"] == [1, 2, 3] and meta["test.strings"] == ["a", "bc", ""]


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = _write(tmp_path / "t.gguf", "test", {"w": (_random((4, 64), 1), Q.Q8_0)})
    whole = path.read_bytes()
    for cut, match in [
        (len(whole) - 50, "truncated: tensor 'w'"),
        (30, "truncated"),
        (3, "truncated"),
    ]:
        (tmp_path / "cut.gguf").write_bytes(whole[:cut])
        with pytest.raises(GGUFError, match=match):
            read_gguf(tmp_path / "cut.gguf")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(b"PK\x03\x04" + whole[4:])
    with pytest.raises(GGUFError, match="version 1 is not supported"):
        read_gguf(whole[:4] + (1).to_bytes(4, "little") + whole[8:])
    with pytest.raises(GGUFError, match="ggml type 99"):
        dequantize(np.zeros(34, np.uint8), 99, 32)
    with pytest.raises(GGUFError, match="whole blocks"):
        dequantize(np.zeros(30, np.uint8), int(Q.Q8_0), 32)
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        read_gguf(tmp_path / "missing.gguf")


# ------------------------------------------------------------------------------ a tiny Llama


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (written out independently)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _byte_alphabet() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return [bytes_to_unicode()[b] for b in range(256)]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A 2-layer Llama (64 wide, 4 query / 2 KV heads) with mixed quantisation and a tokenizer."""
    tokens = SPECIALS + _byte_alphabet() + ["".join(m.split()) for m in MERGES]
    d, n_head, n_kv, hidden, layers = 64, 4, 2, 96, 2
    kv = d // n_head * n_kv
    seed = iter(range(1000))
    tensors = {"token_embd.weight": (_random((len(tokens), d), next(seed)) * 0.5, Q.Q8_0)}
    kinds = {"attn_q": Q.Q4_1, "attn_k": Q.Q4_0, "attn_v": Q.BF16, "attn_output": Q.F16}
    for i in range(layers):
        q = _permute(_random((d, d), next(seed)) * 0.2, n_head)
        k = _permute(_random((kv, d), next(seed)) * 0.2, n_kv)
        mats = {"attn_q": q, "attn_k": k, "attn_v": _random((kv, d), next(seed)) * 0.2}
        mats["attn_output"] = _random((d, d), next(seed)) * 0.2
        for name, array in mats.items():
            tensors[f"blk.{i}.{name}.weight"] = (array, kinds[name])
        tensors[f"blk.{i}.ffn_gate.weight"] = (_random((hidden, d), next(seed)) * 0.2, Q.Q4_1)
        tensors[f"blk.{i}.ffn_up.weight"] = (_random((hidden, d), next(seed)) * 0.2, Q.Q8_0)
        tensors[f"blk.{i}.ffn_down.weight"] = (_random((d, hidden), next(seed)) * 0.2, Q.Q4_1)
        for norm in ("attn_norm", "ffn_norm"):
            tensors[f"blk.{i}.{norm}.weight"] = (1 + 0.1 * _random((d,), next(seed)), Q.F32)
    tensors["output_norm.weight"] = (1 + 0.1 * _random((d,), next(seed)), Q.F32)
    fills = [
        lambda w: w.add_block_count(layers),
        lambda w: w.add_context_length(64),
        lambda w: w.add_embedding_length(d),
        lambda w: w.add_feed_forward_length(hidden),
        lambda w: w.add_head_count(n_head),
        lambda w: w.add_head_count_kv(n_kv),
        lambda w: w.add_rope_freq_base(10000.0),
        lambda w: w.add_layer_norm_rms_eps(1e-5),
        lambda w: w.add_vocab_size(len(tokens)),
        lambda w: w.add_rope_dimension_count(d // n_head),
        lambda w: w.add_tokenizer_model("gpt2"),
        lambda w: w.add_tokenizer_pre("smollm"),
        lambda w: w.add_token_list(tokens),
        lambda w: w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))),
        lambda w: w.add_token_merges(MERGES),
        lambda w: w.add_bos_token_id(1),
        lambda w: w.add_eos_token_id(2),
    ]
    folder = tmp_path_factory.mktemp("gguf")
    return _write(folder / "tiny.gguf", "llama", tensors, fills)


def test_tiny_llama_equals_transformers_gguf_loader(tiny_gguf):
    ours = load_gguf(tiny_gguf)
    theirs = AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32
    ).eval()
    expected = theirs.state_dict()
    for name, tensor in ours.state_dict().items():  # same dequantised, un-permuted weights
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=name)
    idx = torch.randint(
        0, ours.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], theirs(idx).logits, atol=1e-5, rtol=0)
    assert ours.config.n_kv_head == 2 and ours.config.tie_word_embeddings


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.arange(12 * 3, dtype=torch.float32).reshape(12, 3)
    permuted = torch.from_numpy(_permute(w.numpy(), 2))
    assert not torch.equal(permuted, w)
    assert torch.equal(unpermute_rope_rows(permuted, 2), w)
    with pytest.raises(ValueError, match="even size"):
        unpermute_rope_rows(torch.zeros(6, 2), 4)


def test_tokenizer_from_metadata_equals_transformers(tiny_gguf):
    ours = gguf_tokenizer(read_gguf(tiny_gguf))
    theirs = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    assert ours.special_tokens == {s: i for i, s in enumerate(SPECIALS)}
    for text in [
        "the cat is here",
        "  this is\n\nthe end  ",
        "héllo wörld",
        "<|im_start|>x<|im_end|>",
    ]:
        ids = ours.encode(text, allowed_special="all")
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text


def test_wrong_architecture_is_refused(tmp_path):
    path = _write(tmp_path / "g.gguf", "gpt2", {"w": (_random((2, 32), 0), Q.F32)})
    with pytest.raises(GGUFError, match="'gpt2' model"):
        load_gguf(path)


def test_load_gguf_checks_size_before_building(tiny_gguf):
    seen = []

    def refuse(config, dtype):
        seen.append((config.n_layer, dtype))
        raise ValueError("too big")

    with pytest.raises(ValueError, match="too big"):
        load_gguf(tiny_gguf, check_size=refuse)
    assert seen == [(2, torch.float32)]
