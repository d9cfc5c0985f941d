"""Tang poems: conversion of chinese-poetry's JSON, the author split, and the form checker."""

from __future__ import annotations

import json
import random

import pytest

from gptlab.data.documents import Document
from gptlab.evaluate.contamination import check_split
from gptlab.poetry import (
    RULES,
    RUSHENG,
    Poem,
    check_poem,
    convert_tang_poems,
    form_pass_rates,
    poem_form,
    rhyme_keys,
    split_poems,
    tang_poems_from_members,
    to_simplified,
    tone_pattern,
)

# Famous public-domain poems, as chinese-poetry prints them (traditional, one couplet a line).
JINGYESI_T = ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]
DENG_T = ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"]
CHUNXIAO_T = ["春眠不覺曉，處處聞啼鳥。", "夜來風雨聲，花落知多少。"]
CHUNWANG_T = [
    "國破山河在，城春草木深。",
    "感時花濺淚，恨別鳥驚心。",
    "烽火連三月，家書抵萬金。",
    "白頭搔更短，渾欲不勝簪。",
]
SHANJU_T = [
    "空山新雨後，天氣晚來秋。",
    "明月松間照，清泉石上流。",
    "竹喧歸浣女，蓮動下漁舟。",
    "隨意春芳歇，王孫自可留。",
]

JINGYESI = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"
DENG = "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"
CHUNXIAO = "春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。"
CHUNWANG = (
    "国破山河在，城春草木深。\n感时花溅泪，恨别鸟惊心。\n"
    "烽火连三月，家书抵万金。\n白头搔更短，浑欲不胜簪。"
)
SHANJU = (
    "空山新雨后，天气晚来秋。\n明月松间照，清泉石上流。\n"
    "竹喧归浣女，莲动下渔舟。\n随意春芳歇，王孙自可留。"
)
SHANXING = "远上寒山石径斜，白云生处有人家。\n停车坐爱枫林晚，霜叶红于二月花。"
QINGMING = "清明时节雨纷纷，路上行人欲断魂。\n借问酒家何处有？牧童遥指杏花村。"


def record(author, title, paragraphs, rid):
    return {"author": author, "title": title, "paragraphs": paragraphs, "id": rid}


def members_of(*files):
    return {
        f"package/dist/quantangshi/poet.tang.{k * 1000}.json": json.dumps(
            recs, ensure_ascii=False
        ).encode("utf-8")
        for k, recs in enumerate(files)
    }


MEMBERS = members_of(
    [
        record("李白", "靜夜思", JINGYESI_T, "a1"),
        record("王之渙", "登鸛雀樓", DENG_T, "a2"),
        record("孟浩然", "春曉", CHUNXIAO_T, "a3"),
        record("杜甫", "春望", CHUNWANG_T, "a4"),
        record("杜甫", "殘句", ["□□□滿山，花落始知靜。"], "bad-box"),
        record("杜甫", "注", ["停杯試北望，還欲淚沾[襟]。"], "bad-bracket"),
        record("杜甫", "異文", ["遠去更宜長（辛本作「良」），夜後更生光。"], "bad-note"),
        record("杜甫", "空行", ["城春草木深，", ""], "bad-empty"),
        record("杜甫", "無尾", ["城春草木深，感時花濺淚"], "bad-tail"),
        record("杜甫", "無", [], "bad-none"),
    ],
    [
        record("王維", "山居秋暝", SHANJU_T, "b1"),
        record("李白", "静夜思", [JINGYESI.replace("\n", "")], "dup-simplified"),
        record(
            "李白", "靜夜思", [p.replace("，", ",").replace("。", ".") for p in JINGYESI_T], "dup"
        ),
        record("", "無題", ["白日依山盡,黃河入海流."], "half-width"),
    ],
)


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def test_conversion_simplifies_and_keeps_the_record():
    poems = tang_poems_from_members(MEMBERS)
    first = poems[0]
    assert first == Poem(
        title="静夜思",
        author="李白",
        lines=("床前明月光，", "疑是地上霜。", "举头望明月，", "低头思故乡。"),
        collection="quantangshi",
        source_id="a1",
    )
    assert first.text == JINGYESI
    assert [p.source_id for p in poems] == ["a1", "a2", "a3", "a4", "b1", "half-width"]
    assert poems[3].text == CHUNWANG and poems[4].author == "王维" and poems[4].text == SHANJU


def test_conversion_drops_damaged_poems_and_duplicates():
    ids = {p.source_id for p in tang_poems_from_members(MEMBERS)}
    assert not ids & {"bad-box", "bad-bracket", "bad-note", "bad-empty", "bad-tail", "bad-none"}
    # the same poem in simplified characters and with half-width punctuation: duplicates
    assert not ids & {"dup-simplified", "dup"}


def test_conversion_normalises_punctuation_and_names_the_unknown_author():
    poem = tang_poems_from_members(MEMBERS)[-1]
    assert poem.lines == ("白日依山尽，", "黄河入海流。") and poem.author == "佚名"


def test_converter_for_the_corpus_registry():
    docs = convert_tang_poems(MEMBERS)
    assert docs[0] == Document(title="李白《静夜思》", genre="五言绝句", text=JINGYESI + "\n")
    assert [d.genre for d in docs] == ["五言绝句"] * 3 + ["五言律诗"] * 2 + ["其他"]


def test_conversion_rejects_files_that_are_not_poems():
    with pytest.raises(ValueError, match="not UTF-8 JSON"):
        tang_poems_from_members({"x.json": b"{not json"})
    with pytest.raises(ValueError, match="not a list of poems"):
        tang_poems_from_members({"x.json": b'{"a": 1}'})
    with pytest.raises(ValueError, match="paragraphs"):
        tang_poems_from_members({"x.json": b'[{"title": "t"}]'})
    with pytest.raises(TypeError, match="mapping"):
        tang_poems_from_members([("x.json", b"[]")])


def test_to_simplified():
    assert to_simplified("舉頭望明月，低頭思故鄉。") == "举头望明月，低头思故乡。"
    with pytest.raises(TypeError):
        to_simplified(b"x")


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------


def random_poems(n_authors: int, seed: int = 0) -> list[Poem]:
    """Poems of random characters (no shared 8-grams by chance), 1-6 per author."""
    rng = random.Random(seed)
    pool = [chr(0x4E00 + k) for k in range(3000)]
    poems = []
    for a in range(n_authors):
        for k in range(rng.randint(1, 6)):
            lines = tuple(
                "".join(rng.choice(pool) for _ in range(5)) + ("，" if i % 2 == 0 else "。")
                for i in range(4)
            )
            poems.append(Poem(f"题{k}", f"作者{a}", lines, "quantangshi", f"{a}-{k}"))
    return poems


def test_split_keeps_each_author_on_one_side():
    poems = random_poems(60)
    train, val = split_poems(poems, 0.2, seed=0)
    assert {p.author for p in train}.isdisjoint({p.author for p in val})
    assert len(train) + len(val) == len(poems)
    assert 0 < len(val) <= round(0.2 * len(poems))
    assert len(val) >= 0.15 * len(poems)  # close to the target, not just below it
    check_split([p.text for p in train], [p.text for p in val])
    again = split_poems(poems, 0.2, seed=0)
    assert again == (train, val)
    assert split_poems(poems, 0.2, seed=1)[1] != val


def test_split_drops_a_poem_that_training_holds_under_another_name():
    """全唐诗 often prints one poem under two poets; it must not end up on both sides."""
    poems = random_poems(60)
    copies = [
        Poem(p.title, "另一人" + p.author, p.lines, p.collection, "copy-" + p.source_id)
        for p in poems
    ]
    mixed = poems + copies
    train, val = split_poems(mixed, 0.3, seed=0)
    assert {p.author for p in train}.isdisjoint({p.author for p in val})
    train_texts = {p.text for p in train}
    assert not any(p.text in train_texts for p in val)
    check_split([p.text for p in train], [p.text for p in val])
    assert len(train) + len(val) < len(mixed)  # the leaked copies were dropped


def test_split_by_poem_and_arguments():
    poems = random_poems(5)
    train, val = split_poems(poems, 0.25, seed=3, by="poem")
    assert len(val) == round(0.25 * len(poems)) and len(train) + len(val) == len(poems)
    with pytest.raises(ValueError, match="val_fraction"):
        split_poems(poems, 1.0, seed=0)
    with pytest.raises(ValueError, match="by must be"):
        split_poems(poems, 0.2, seed=0, by="title")
    with pytest.raises(ValueError, match="fits"):
        one_author = [Poem("t", "甲", p.lines, "c", p.source_id) for p in poems]
        split_poems(one_author, 0.2, seed=0)
    with pytest.raises(TypeError, match="not a Poem"):
        split_poems(["床前明月光"], 0.2, seed=0)


# --------------------------------------------------------------------------------------------
# The form checker
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "form", "rhyme", "pattern"),
    [
        (DENG, "五言绝句", "尤平", "仄起首句不入韵"),
        (CHUNWANG, "五言律诗", "文平", "仄起首句不入韵"),
        (SHANJU, "五言律诗", "尤平", "平起首句不入韵"),
        (SHANXING, "七言绝句", "麻平", "仄起首句入韵"),
        (QINGMING, "七言绝句", "文平", "平起首句入韵"),
    ],
    ids=["deng-guanque-lou", "chun-wang", "shanju-qiuming", "shan-xing", "qing-ming"],
)
def test_regular_poems_pass_every_rule(text, form, rhyme, pattern):
    report = check_poem(text)
    assert report.ok, report.problems
    assert (report.form, report.rhyme, report.pattern) == (form, rhyme, pattern)
    assert report.first_line_rhymes == ("首句入韵" in pattern)


def test_jingyesi_is_irregular_in_its_tones():
    """静夜思 is a 古绝: right shape and rhyme (光 霜 乡), but its 平仄 breaks the pattern at
    two checked positions: 疑是地上霜 (上 is oblique at 4) and 举头望明月 (头 is level at 2)."""
    report = check_poem(JINGYESI)
    assert report.form == "五言绝句" and report.rhyme == "唐平" and report.first_line_rhymes
    assert {k: v for k, v in report.checks.items()} == {
        "lines": True,
        "chars": True,
        "punctuation": True,
        "rhyme": True,
        "tones": False,
    }
    assert report.pattern == "平起首句入韵"
    assert report.problems == ("平仄 breaks 平起首句入韵 at line 2 position 4, line 3 position 2",)


def test_chunxiao_rhymes_in_oblique_tones():
    """春晓 rhymes 晓 鸟 少 in the oblique tone (a 仄韵 古绝), so no regulated pattern fits."""
    report = check_poem(CHUNXIAO)
    assert report.rhyme == "豪仄" and report.checks["rhyme"] and not report.checks["tones"]


def test_a_missing_character_fails_chars_only():
    report = check_poem(DENG.replace("黄河入海流", "黄河入流"))
    assert report.checks == dict(lines=True, chars=False, punctuation=True, rhyme=True, tones=False)
    assert "5/4/5/5" in report.problems[0] and report.form is None


def test_a_wrong_rhyme_fails_rhyme_only():
    report = check_poem(DENG.replace("更上一层楼", "更上一层山"))
    assert report.checks == dict(lines=True, chars=True, punctuation=True, rhyme=False, tones=True)
    assert "流山" in report.problems[0]


@pytest.mark.parametrize(
    "poem",
    [
        ["白日依山尽", "黄河入海流。", "欲穷千里目，", "更上一层楼。"],  # no mark after line 1
        "白日依山尽\n黄河入海流。欲穷千里目，更上一层楼。",
        "白日依山尽。黄河入海流，欲穷千里目，更上一层楼。",  # marks swapped
        "白日依山尽，黄河入海流。欲穷千里目，更上一层楼",  # no final mark
    ],
)
def test_missing_or_wrong_punctuation_fails_punctuation_only(poem):
    report = check_poem(poem)
    assert report.checks == dict(lines=True, chars=True, punctuation=False, rhyme=True, tones=True)


def test_tones_check_positions_two_four_six_only():
    """一三五不论: changing the tone at position 1 keeps the pattern; at position 2 it breaks."""
    assert check_poem(DENG.replace("白日", "红日")).checks["tones"]  # 白 (入声, 仄) -> 红 平
    report = check_poem(DENG.replace("白日", "白云"))  # 日 仄 -> 云 平
    assert not report.checks["tones"]
    assert report.problems == ("平仄 breaks 仄起首句不入韵 at line 1 position 2",)


def test_rusheng_characters_are_oblique():
    """别 is read bié (tone 2, level) today but was an entering tone: 仄. Without the list
    恨别鸟惊心 would break 春望's pattern."""
    assert "别" in RUSHENG and tone_pattern("恨别鸟惊心") == "仄仄仄平平"
    assert tone_pattern("国破山河在") == "仄仄平平仄"


def test_rhyme_keys_use_every_reading():
    assert "麻平" in rhyme_keys("斜")  # xiá, the reading that rhymes with 家 and 花
    assert rhyme_keys("簪") & rhyme_keys("心")  # 侵 rhyme, lost in modern zān
    assert not rhyme_keys("流") & rhyme_keys("山")
    assert rhyme_keys("，") == frozenset()


def test_other_shapes():
    report = check_poem("床前明月光，疑是地上霜。")
    assert not report.checks["lines"] and report.form is None and not report.checks["tones"]
    assert not check_poem("").ok
    assert not check_poem("床前明月a，疑是地上霜。举头望明月，低头思故乡。").checks["chars"]
    assert poem_form(["白日依山尽，", "黄河入海流。", "欲穷千里目，", "更上一层楼。"]) == "五言绝句"
    assert poem_form(["白日依山尽，", "黄河入海流。"]) is None
    with pytest.raises(TypeError):
        check_poem(12)


def test_check_poem_accepts_a_poem_object():
    poem = tang_poems_from_members(MEMBERS)[1]
    assert check_poem(poem) == check_poem(DENG)


def test_form_pass_rates():
    rates = form_pass_rates([DENG, JINGYESI, CHUNXIAO, DENG.replace("黄河入海流", "黄河入流")])
    assert rates == {
        "lines": 1.0,
        "chars": 0.75,
        "punctuation": 1.0,
        "rhyme": 1.0,
        "tones": 0.25,
        "ok": 0.25,
    }
    assert list(rates) == [*RULES, "ok"]
    with pytest.raises(ValueError, match="non-empty list"):
        form_pass_rates([])
    with pytest.raises(ValueError, match="wrap a single poem"):
        form_pass_rates(DENG)
