"""Tokenizers: CharTokenizer, our byte-level BPE (training, encoding, streaming, files) and the
GPT-2 tokenizer, pinned to known ids and to independent implementations (tiktoken's Rust BPE and
Hugging Face `tokenizers`, both built offline from the same ranks file)."""

from __future__ import annotations

import io
import json
import random
import warnings
from collections import Counter

import pytest
import regex
import tiktoken
import torch

import gptlab.tokenizers as tokmod
from gptlab.tokenizers import (
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    CharTokenizer,
    TokenizerFileError,
    get_tokenizer,
)

EOT = "<|endoftext|>"
HELLO = "Hello, world! 你好"
HELLO_IDS = [15496, 11, 995, 0, 220, 19526, 254, 25001, 121]

# Text that exercises every branch of the pre-tokenizer: contractions, numbers, punctuation runs,
# whitespace runs before words and at the end, tabs, CRLF, code, CJK, emoji, accents, NBSP.
VARIED = [
    "",
    " ",
    "hello world",
    "Hello, world!",
    "I'm sure they'll say it's what we've done, isn't it? You're RIGHT'S",
    "numbers 1234567890 3.14159 -42 1e-9 2024-11-28",
    "    indented\n\tTabbed\n\n\nthree newlines   trailing   ",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\r\n",
    "你好，世界！这是中文文本。",
    "emoji 😀👍🏽 family 👨‍👩‍👧 and flags 🇫🇷",
    "Ünïcödé façade naïve café — “quotes” … \u00a0nbsp",
    "          ",
    "a" * 300,
    " " * 257 + "x",
    "x\n\n\n\n",
    "$$$!!!???...,,,;;;",
]

# Strings drawn from pieces that make the regex and the merges interact.
_PIECES = list("abcXYZ 019'.,!?\n\t") + [
    "'ll",
    "'s",
    "'ve",
    "  ",
    "你好",
    "😀",
    "é",
    "ß",
    "\u00a0",
    "Ω",
    "—",
    "\r\n",
    " the",
    "ing",
]


def random_texts(n: int, seed: int, max_pieces: int = 30, pieces: list[str] = _PIECES) -> list[str]:
    rng = random.Random(seed)
    return [
        "".join(rng.choice(pieces) for _ in range(rng.randint(0, max_pieces))) for _ in range(n)
    ]


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    return BPETokenizer.gpt2()


@pytest.fixture(scope="module")
def enc() -> tiktoken.Encoding:
    return get_tokenizer("gpt2")


def train_quietly(text: str, vocab_size: int, **kwargs) -> BPETokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny corpora run out of pairs; that is expected here
        return BPETokenizer.train(text, vocab_size, **kwargs)


# --------------------------------------------------------------------------------------------
# CharTokenizer
# --------------------------------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_sorted_vocab():
    text = "hello world\n你好 😀"
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text))
    assert tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.encode("") == [] and tok.decode([]) == ""
    assert tok.encode("\n") == [0]  # "\n" has the smallest code point
    assert tok.decode(torch.tensor(ids)) == text  # tensors are accepted too


def test_char_tokenizer_errors():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"character 'z' is not in the vocabulary.*refit"):
        tok.encode("abz")
    with pytest.raises(ValueError, match=r"'\\n'"):  # unprintable characters are shown by repr
        tok.encode("a\n")
    with pytest.raises(ValueError, match=r"token id 3 is out of range; valid ids are 0\.\.2"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="must be a str"):
        tok.encode(b"abc")
    with pytest.raises(TypeError, match="token ids must be ints"):
        tok.decode([0.0])
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.from_text("")
    with pytest.raises(TypeError, match="must be a str"):
        CharTokenizer.from_text(["a", "b"])


def test_char_tokenizer_save_load(tmp_path):
    tok = CharTokenizer.from_text("To be, or not to be 😀\n")
    path = tmp_path / "chars.json"
    tok.save(path)
    loaded = CharTokenizer.load(path)
    assert loaded.chars == tok.chars
    assert json.loads(path.read_text(encoding="utf-8"))["chars"] == tok.chars
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file

    data = json.loads(path.read_text(encoding="utf-8"))
    data["chars"] = ["a", "a"]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="corrupted.*distinct"):
        CharTokenizer.load(path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="not valid JSON"):
        CharTokenizer.load(path)


# --------------------------------------------------------------------------------------------
# GPT-2: known ids, tiktoken, Hugging Face tokenizers
# --------------------------------------------------------------------------------------------


def test_gpt2_known_ids(gpt2, enc):
    assert enc.encode(HELLO) == HELLO_IDS
    assert gpt2.encode(HELLO) == HELLO_IDS
    assert enc.n_vocab == gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {EOT: 50256}
    assert gpt2.encode(EOT, allowed_special={EOT}) == [50256]
    assert gpt2.vocab[50256] == EOT.encode()
    assert gpt2.vocab[262] == b" the"
    assert gpt2.merges[0] == (b" ", b"t")  # GPT-2's first merge
    assert len(gpt2.merges) == 50000
    # half a character decodes to the replacement character, as in GPT-2
    assert gpt2.decode([19526]) == "\ufffd"
    assert gpt2.decode(HELLO_IDS) == HELLO


def test_get_tokenizer_is_cached_and_checks_name(enc):
    assert get_tokenizer() is enc
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt3'; known tokenizers: gpt2"):
        get_tokenizer("gpt3")


@pytest.mark.parametrize("text", VARIED)
def test_gpt2_equals_tiktoken_and_round_trips(gpt2, enc, text):
    ids = gpt2.encode(text)
    assert ids == enc.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text
    assert gpt2.decode_bytes(ids) == text.encode("utf-8")


def test_gpt2_equals_tiktoken_on_random_text(gpt2, enc):
    for text in random_texts(1500, seed=0) + random_texts(20, seed=1, max_pieces=400):
        assert gpt2.encode(text) == enc.encode(text, allowed_special="all"), repr(text)


def test_gpt2_equals_hugging_face_tokenizers(gpt2, enc):
    """A third implementation: HF applies GPT-2's *merges* by pair rank (the original algorithm),
    so agreeing with it also proves the merges we recovered from the ranks are GPT-2's."""
    hf_tokenizers = pytest.importorskip("tokenizers")
    byte_to_char = _gpt2_bytes_to_unicode()

    def visible(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab = {visible(t): i for i, t in gpt2.vocab.items() if i != 50256}
    merges = [(visible(a), visible(b)) for a, b in gpt2.merges]
    hf = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in VARIED + random_texts(500, seed=2):
        assert hf.encode(text).ids == gpt2.encode(text, allowed_special="none"), repr(text)


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    # GPT-2 shows bytes as printable characters: printable Latin-1 stays, the rest shifts to 256+.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def test_gpt2_package_data_checksum(monkeypatch):
    data = tokmod._read_gpt2_asset()
    tampered = data.replace(b"IQ== 0", b"Ig== 0", 1)
    tokmod._gpt2_ranks.cache_clear()
    tokmod._gpt2_encoding.cache_clear()
    try:
        monkeypatch.setattr(tokmod, "_read_gpt2_asset", lambda: tampered)
        with pytest.raises(TokenizerFileError, match="corrupted.*reinstall gptlab"):
            get_tokenizer("gpt2")
        with pytest.raises(TokenizerFileError, match="corrupted"):
            BPETokenizer.gpt2()
    finally:
        tokmod._gpt2_ranks.cache_clear()
        tokmod._gpt2_encoding.cache_clear()


def test_from_tiktoken_file(tmp_path, gpt2):
    path = tmp_path / "gpt2.tiktoken"
    path.write_bytes(tokmod._read_gpt2_asset())
    tok = BPETokenizer.from_tiktoken_file(path)
    assert tok.special_tokens == {EOT: 50256}
    assert tok.merges == gpt2.merges
    assert tok.encode(HELLO) == HELLO_IDS

    # a ranks file whose token cannot be built from two lower-ranked tokens is rejected
    lines = [f"{_b64(bytes([b]))} {b}" for b in range(256)] + [f"{_b64(b'abc')} 256"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TokenizerFileError, match="cannot be built by merging"):
        BPETokenizer.from_tiktoken_file(path)
    path.write_text("not-base64!! zero\n")
    with pytest.raises(TokenizerFileError, match="line 1 is not"):
        BPETokenizer.from_tiktoken_file(path)
    with pytest.raises(TokenizerFileError, match="no ranks file"):
        BPETokenizer.from_tiktoken_file(tmp_path / "missing.tiktoken")


def _b64(token: bytes) -> str:
    import base64

    return base64.b64encode(token).decode()


# --------------------------------------------------------------------------------------------
# Special tokens
# --------------------------------------------------------------------------------------------


def test_special_tokens_never_split(gpt2, enc):
    a, b = gpt2.encode("a"), gpt2.encode("b")
    assert gpt2.encode(f"a{EOT}b", allowed_special="all") == a + [50256] + b
    assert gpt2.encode(EOT * 3, allowed_special="all") == [50256] * 3
    assert gpt2.encode(f" {EOT} ", allowed_special="all") == [220, 50256, 220]
    # a special token inside look-alike text, and broken look-alikes that stay plain text
    tricky = f"<|<|endoftext|>|> <|endoftext| <|endoftext|>>{EOT}"
    assert gpt2.encode(tricky, allowed_special="all") == enc.encode(tricky, allowed_special="all")
    assert gpt2.encode(tricky, allowed_special="all").count(50256) == 3
    # "none": the same characters are ordinary text (several tokens, no 50256)
    plain = gpt2.encode(f"a{EOT}b", allowed_special="none")
    assert 50256 not in plain
    assert plain == enc.encode_ordinary(f"a{EOT}b")
    assert gpt2.decode(plain) == f"a{EOT}b"
    assert gpt2.encode(f"a{EOT}b", allowed_special={EOT}) == a + [50256] + b
    with pytest.raises(ValueError, match=r"\['<\|pad\|>'\] are not special tokens"):
        gpt2.encode("x", allowed_special={"<|pad|>"})
    with pytest.raises(ValueError, match="allowed_special must be 'all', 'none'"):
        gpt2.encode("x", allowed_special="some")


def test_special_token_text_is_refused_by_default_like_tiktoken(gpt2, enc):
    """Fails on the old default allowed_special="all", which turned a literal <|endoftext|> in a
    prompt or a training file into the control token."""
    text = f"a{EOT}b"
    for tok in (gpt2, enc):
        with pytest.raises(ValueError):
            tok.encode(text)
        with pytest.raises(ValueError):
            tok.encode(text, allowed_special=set())
    message = r"contains '<\|endoftext\|>'.*allowed_special=\{'<\|endoftext\|>'\}.*encode_ordinary"
    with pytest.raises(ValueError, match=message):
        gpt2.encode(text)
    plain = enc.encode_ordinary(text)
    assert gpt2.encode_ordinary(text) == plain
    assert (
        gpt2.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=()) == plain
    )
    assert gpt2.encode("no specials here") == enc.encode("no specials here")
    with pytest.raises(ValueError, match="both allowed and disallowed"):
        gpt2.encode("x", allowed_special={EOT}, disallowed_special={EOT})
    with pytest.raises(ValueError, match="disallowed_special must be 'all' or a set"):
        gpt2.encode("x", disallowed_special=EOT)
    with pytest.raises(TypeError, match="text must be a str"):
        gpt2.encode_ordinary(b"x")


def test_disallowing_some_specials_leaves_the_others_plain():
    tok = train_quietly("hello there", 262, special_tokens=("<|a|>", "<|b|>"))
    a = tok.special_tokens["<|a|>"]
    # <|b|> is neither allowed nor disallowed: plain text, as tiktoken does
    ids = tok.encode("<|a|><|b|>", allowed_special={"<|a|>"}, disallowed_special=())
    assert ids == [a, *tok.encode_ordinary("<|b|>")]
    with pytest.raises(ValueError, match=r"contains '<\|b\|>'"):
        tok.encode("<|a|><|b|>", allowed_special={"<|a|>"})
    with pytest.raises(ValueError, match=r"contains '<\|a\|>'"):
        tok.encode("<|a|><|b|>", disallowed_special={"<|a|>"})


def test_overlapping_special_tokens_longest_wins():
    tok = train_quietly("hello there, hello world", 270, special_tokens=("<|end|>", "<|end|>!"))
    end, end_bang = tok.special_tokens["<|end|>"], tok.special_tokens["<|end|>!"]
    assert (end, end_bang) == (tok.vocab_size - 2, tok.vocab_size - 1)
    ids = tok.encode("<|end|>!<|end|><|end|>!!", allowed_special="all")
    assert ids == [end_bang, end, end_bang, *tok.encode("!")]
    # only the shorter one allowed: the "!" becomes ordinary text
    ids = tok.encode("<|end|>!", allowed_special={"<|end|>"}, disallowed_special=())
    assert ids == [end, *tok.encode("!")]


def test_training_never_merges_across_or_into_special_tokens():
    text = ("ab" + EOT) * 50 + "ab"
    tok = BPETokenizer.train(text, 256 + 1 + 1)  # room for one merge
    assert tok.merges == [(b"a", b"b")]  # 'b<' / '|>a' never count: the text is split on EOT
    assert tok.encode(text, allowed_special="all").count(tok.special_tokens[EOT]) == 50
    tok = train_quietly(text, 300)
    assert all(b"<" not in t and b">" not in t for t in tok.merges for t in t)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def test_tie_break_prefers_greatest_pair_of_byte_strings():
    # Every pair of "abcd" occurs once: the tie goes to the greatest (bytes, bytes) pair.
    tok = train_quietly("abcd", 259, special_tokens=())
    assert tok.merges == [(b"c", b"d"), (b"b", b"cd"), (b"a", b"bcd")]
    assert tok.encode("abcd") == [258]


def test_training_pinned_to_hand_computed_merges():
    # aaabdaaabac: aa=4 first; then (aa,a) and (a,b) tie at 2 and (b'aa', b'a') > (b'a', b'b');
    # then (aaa,b)=2; then all pairs tie at 1 and (b'd', b'aaab') is the greatest.
    tok = BPETokenizer.train("aaabdaaabac", 256 + 4, special_tokens=())
    assert tok.merges == [(b"a", b"a"), (b"aa", b"a"), (b"aaa", b"b"), (b"d", b"aaab")]
    # Pre-tokens are counted with their frequency: "hug", " hug", " hugs", " pug".
    tok = BPETokenizer.train("hug hug hugs pug", 256 + 4 + 1)
    assert tok.merges == [(b"u", b"g"), (b"h", b"ug"), (b" ", b"hug"), (b"p", b"ug")]
    assert tok.special_tokens == {EOT: 260}
    assert tok.vocab[256] == b"ug" and tok.vocab[259] == b"pug"
    assert tok.encode(" hugs pug") == [258, ord("s"), ord(" "), 259]


def _naive_train(text: str, vocab_size: int) -> list[tuple[bytes, bytes]]:
    """The textbook algorithm: recount every pair of every word before each merge."""
    words = Counter(regex.findall(GPT2_SPLIT_PATTERN, text))
    parts = {w: [bytes([b]) for b in w.encode()] for w in words}
    vocab = {bytes([b]) for b in range(256)}
    merges: list[tuple[bytes, bytes]] = []
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for w, f in words.items():
            for pair in zip(parts[w], parts[w][1:], strict=False):
                pairs[pair] += f
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        if best[0] + best[1] not in vocab:
            vocab.add(best[0] + best[1])
            merges.append(best)
        for w, seq in parts.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            parts[w] = out
    return merges


def test_incremental_training_equals_naive_recount():
    pieces = ["a", "b", "c", " ", "ab", "ba", "aa", "'s", "\n", "1"]
    for text in random_texts(40, seed=3, max_pieces=40, pieces=pieces):
        assert train_quietly(text, 290, special_tokens=()).merges == _naive_train(text, 290)
    text = " ".join(random_texts(200, seed=4, max_pieces=8))
    assert train_quietly(text, 400, special_tokens=()).merges == _naive_train(text, 400)


def test_trained_tokenizer_encodes_like_tiktoken():
    corpus = " ".join(random_texts(300, seed=5)) + " the cat sat on the mat. " * 20
    tok = BPETokenizer.train(corpus, 600)
    assert tok.vocab_size == 600 and len(tok.merges) == 600 - 256 - 1
    assert [tok.vocab[i] for i in range(256)] == [bytes([i]) for i in range(256)]
    ref = tiktoken.Encoding(
        name="trained",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks={t: i for i, t in tok.vocab.items() if i != tok.special_tokens[EOT]},
        special_tokens=tok.special_tokens,
    )
    for text in VARIED + random_texts(300, seed=6):
        ids = tok.encode(text)
        assert ids == ref.encode(text, allowed_special="all"), repr(text)
        assert tok.decode(ids) == text


def test_train_validates_inputs():
    with pytest.raises(ValueError, match=r"vocab_size=256 is too small: it must be at least 257"):
        BPETokenizer.train("abc", 256)
    with pytest.raises(ValueError, match="at least 258"):
        BPETokenizer.train("abc", 257, special_tokens=("<|a|>", "<|b|>"))
    with pytest.raises(TypeError, match="text must be a str"):
        BPETokenizer.train(b"abc", 300)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        BPETokenizer.train("abc", 300.0)
    with pytest.raises(TypeError, match=r"wrap it: special_tokens=\('<\|x\|>',\)"):
        BPETokenizer.train("abc", 300, special_tokens="<|x|>")
    with pytest.raises(ValueError, match="distinct"):
        BPETokenizer.train("abc", 300, special_tokens=("<|x|>", "<|x|>"))
    with pytest.warns(UserWarning, match="ran out of pairs to merge after 2 merges"):
        tok = BPETokenizer.train("abc", 300)
    assert tok.vocab_size == 256 + 2 + 1


def test_train_verbose_reports_progress(capsys):
    BPETokenizer.train("hug hug hugs pug", 256 + 4 + 1, verbose=True)
    assert "merge 4/4: b'p' + b'ug' -> id 259 (seen 1 times)" in capsys.readouterr().out


def test_train_with_a_bad_pattern_says_so():
    """Raised a raw regex.error before."""
    with pytest.raises(ValueError, match=r"pattern '\(' is not a valid regular expression"):
        BPETokenizer.train("abc", 300, pattern="(")


# --------------------------------------------------------------------------------------------
# Encoding and decoding
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> BPETokenizer:
    corpus = " ".join(VARIED) + " ".join(random_texts(200, seed=7))
    return BPETokenizer.train(corpus, 512, special_tokens=(EOT, "<|pad|>"))


@pytest.mark.parametrize("text", VARIED)
def test_round_trip(small, text):
    assert small.decode(small.encode(text)) == text


def test_decode_and_encode_errors(small, gpt2):
    with pytest.raises(
        ValueError, match=r"token id 50257 is out of range; valid ids are 0\.\.50256"
    ):
        gpt2.decode([1, 50257])
    with pytest.raises(ValueError, match=r"token id -1 is out of range"):
        small.decode([-1])
    with pytest.raises(TypeError, match="token ids must be ints"):
        small.decode(["a"])
    with pytest.raises(TypeError, match="ids must be a sequence of ints"):
        small.decode("abc")
    with pytest.raises(TypeError, match="text must be a str"):
        small.encode(None)
    assert small.decode(torch.tensor(small.encode("abc"))) == "abc"
    assert gpt2.decode([]) == "" and gpt2.encode("") == []


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", " \ud83d\ude00!", "x \ud800\ud800 y"])
def test_surrogates_encode_like_tiktoken(gpt2, enc, text):
    """Raised a raw UnicodeEncodeError before: a lone surrogate now becomes U+FFFD and a
    surrogate pair its character, exactly as tiktoken fixes them up."""
    fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert gpt2.encode(text) == enc.encode(text) == gpt2.encode(fixed)
    assert list(gpt2.encode_iterable(list(text))) == enc.encode(text)  # one code unit at a time
    tok = train_quietly(text * 3, 260, special_tokens=())  # training no longer crashes either
    assert tok.decode(tok.encode(text)) == fixed


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


def _pieces(text: str, rng: random.Random) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = rng.choice([1, 1, 2, 3, 5, 7, 13, 64])
        out.append(text[i : i + n])
        i += n
    return out


def test_encode_iterable_equals_encode(gpt2, small):
    rng = random.Random(8)
    pieces_with_specials = _PIECES + [EOT, "<|pad|>", "<|endof", "text|>", "<|", "|>"]
    texts = VARIED + random_texts(200, seed=9, pieces=pieces_with_specials)
    modes = [dict(allowed_special="all"), dict(allowed_special="none"), dict()]
    modes.append(dict(allowed_special={EOT}, disallowed_special=()))
    for tok in (gpt2, small):
        for text in texts:
            for kw in modes:
                try:
                    expected = tok.encode(text, **kw)
                except ValueError:  # a disallowed special: the stream must refuse it too
                    with pytest.raises(ValueError, match="the text of a special token"):
                        list(tok.encode_iterable(_pieces(text, rng), **kw))
                    continue
                assert list(tok.encode_iterable(_pieces(text, rng), **kw)) == expected, repr(text)
                assert list(tok.encode_iterable([text], **kw)) == expected


def test_encode_iterable_finds_a_disallowed_special_split_across_pieces(gpt2):
    """The check must look across piece boundaries, and arguments are checked at the call."""
    with pytest.raises(ValueError, match="the text of a special token"):
        list(gpt2.encode_iterable(["a <|endo", "ftext|", "> b"]))
    with pytest.raises(ValueError, match="allowed_special must be"):
        gpt2.encode_iterable(["x"], allowed_special="some")  # no next() needed
    assert list(gpt2.encode_iterable(["a <|endo", "ftext|> b"], disallowed_special=())) == (
        gpt2.encode_ordinary(f"a {EOT} b")
    )


def test_encode_iterable_reads_a_file_lazily(gpt2):
    text = "".join(VARIED) + f"{EOT}\nIt's a file.\n" * 50
    expected = gpt2.encode(text, allowed_special="all")
    assert list(gpt2.encode_iterable(io.StringIO(text), allowed_special="all")) == expected

    def lines():  # a generator: nothing is read before it is needed
        yield "first line\n"
        raise RuntimeError("stop")

    stream = gpt2.encode_iterable(lines())
    with pytest.raises(RuntimeError, match="stop"):
        list(stream)
    with pytest.raises(TypeError, match="for one string use encode"):
        next(gpt2.encode_iterable("a string"))


def test_encode_iterable_holds_back_little(gpt2):
    """Constant memory: after many lines only the last pre-tokens are pending."""
    produced = []
    stream = gpt2.encode_iterable(iter(["word " * 10] * 1000))
    for _ in range(10):
        produced.append(next(stream))
    assert produced == gpt2.encode("word " * 10)[:10]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, small, gpt2):
    for tok in (small, gpt2):
        path = tmp_path / "tok.json"
        tok.save(path)
        loaded = BPETokenizer.load(path)
        assert loaded.vocab == tok.vocab
        assert loaded.merges == tok.merges
        assert loaded.special_tokens == tok.special_tokens
        assert loaded.pattern == tok.pattern
        for text in VARIED[:6]:
            assert loaded.encode(text) == tok.encode(text)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["vocab"][262] == " the"  # readable: ASCII tokens appear as themselves
    assert data["merges"][0] == [" ", "t"]
    assert data["special_tokens"] == {EOT: 50256}
    assert data["format"] == "gptlab.bpe_tokenizer" and data["version"] == 1


def test_load_rejects_corrupted_files(tmp_path, small):
    path = tmp_path / "tok.json"
    small.save(path)
    good = json.loads(path.read_text(encoding="utf-8"))

    def write(data) -> None:
        path.write_text(json.dumps(data), encoding="utf-8")

    write({**good, "merges": good["merges"][:-1]})
    with pytest.raises(TokenizerFileError, match="corrupted or inconsistent.*merges"):
        BPETokenizer.load(path)
    swapped = [list(m) for m in good["merges"]]
    k = next(i for i, (a, b) in enumerate(swapped) if a + b != b + a)
    swapped[k] = swapped[k][::-1]
    write({**good, "merges": swapped})
    with pytest.raises(TokenizerFileError, match="does not build token"):
        BPETokenizer.load(path)
    write({**good, "vocab": good["vocab"][1:]})
    with pytest.raises(TokenizerFileError, match="corrupted or inconsistent"):
        BPETokenizer.load(path)
    write({**good, "version": 99})
    with pytest.raises(TokenizerFileError, match="format version 99.*upgrade gptlab"):
        BPETokenizer.load(path)
    write({**good, "format": "something else"})
    with pytest.raises(TokenizerFileError, match="is not a gptlab.bpe_tokenizer file"):
        BPETokenizer.load(path)
    write({k: v for k, v in good.items() if k != "merges"})
    with pytest.raises(TokenizerFileError, match="lacks the field 'merges'"):
        BPETokenizer.load(path)
    path.write_text(path.read_text()[:100], encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="not valid JSON"):
        BPETokenizer.load(path)
    with pytest.raises(TokenizerFileError, match="no tokenizer file"):
        BPETokenizer.load(tmp_path / "missing.json")


def test_load_refuses_an_unknown_pattern_unless_trusted(tmp_path, small):
    """A file could carry a catastrophic regex ((a|aa)+$ took 38 s on one encode); it used to be
    compiled and run without a word."""
    assert tokmod.KNOWN_PATTERNS["gpt2"] == GPT2_SPLIT_PATTERN
    path = tmp_path / "tok.json"
    small.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["pattern"] = "(a|aa)+$"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        TokenizerFileError, match=r"not one of gptlab's known patterns.*trust_pattern=True"
    ):
        BPETokenizer.load(path)
    trusted = BPETokenizer.load(path, trust_pattern=True)
    assert trusted.pattern == "(a|aa)+$"
    assert BPETokenizer.load(tmp_path / "tok.json", trust_pattern=True).vocab == small.vocab
    with pytest.raises(TypeError, match="trust_pattern must be True or False"):
        BPETokenizer.load(path, trust_pattern="yes")


def test_loading_a_directory_says_which_file_to_pass(tmp_path):
    """Raised a raw IsADirectoryError before."""
    for load in (BPETokenizer.load, CharTokenizer.load, BPETokenizer.from_tiktoken_file):
        with pytest.raises(TokenizerFileError, match="is a directory.*pass the path of the file"):
            load(tmp_path)


def test_encode_plain_keeps_typed_special_tokens_as_text():
    from gptlab.tokenizers import encode_plain

    gpt2 = get_tokenizer("gpt2")
    text = "a <|endoftext|> b"
    assert encode_plain(gpt2, text) == gpt2.encode_ordinary(text)
    assert 50256 not in encode_plain(gpt2, text)  # the typed marker is not the control token
    bpe = BPETokenizer.train("hello world " * 50, vocab_size=265, special_tokens=["<|endoftext|>"])
    eot = bpe.special_tokens["<|endoftext|>"]
    assert eot not in encode_plain(bpe, text) and bpe.decode(encode_plain(bpe, text)) == text
    char = CharTokenizer.from_text("ab <|>")
    assert char.decode(encode_plain(char, "a <|> b")) == "a <|> b"

    class OnlyEncode:  # any other tokenizer: its encode
        def encode(self, s):
            return [ord(c) for c in s]

    assert encode_plain(OnlyEncode(), "hi") == [104, 105]
    with pytest.raises(TypeError, match="text must be a string"):
        encode_plain(gpt2, b"bytes")
    with pytest.raises(TypeError, match="encode_ordinary or encode"):
        encode_plain(object(), "hi")
