"""recipes/poetry_model.py: its split by poet, its character tokenizer, its constrained samples
and its first training steps (against the shipped run's, once gptlab/assets/poetry_model/
exists)."""

from __future__ import annotations

import collections
import json
import math
import pathlib

import pytest

from gptlab.evaluate.contamination import find_overlap
from gptlab.poetry import check_poem
from gptlab.reference import MANIFEST_FILE

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "gptlab" / "assets" / "poetry_model"
SLICE = ("package/dist/quantangshi/poet.tang.0.json",)  # 1,000 records, 390 regulated poems

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def recipe(load_recipe):
    return load_recipe("poetry_model")


@pytest.fixture(scope="module")
def poems(recipe):
    return recipe.load_poems(SLICE)


@pytest.fixture(scope="module")
def split(recipe, poems):
    return recipe.split(poems)


def test_split_holds_out_whole_poets_and_only_regulated_poems(recipe, poems, split):
    train, val = split
    assert train and val and len(train) + len(val) <= len(poems)
    assert not {p.author for p in train} & {p.author for p in val}
    assert len(val) <= round(recipe.SPLIT["val_fraction"] * len(poems))
    assert {p.form for p in poems} <= set(recipe.FORMS)  # 绝句 and 律诗 only
    assert find_overlap([p.text for p in train], [p.text for p in val], 8).clean


def test_tokenizer_is_built_from_training_poems_and_round_trips_them(recipe, split):
    train, val = split
    tokenizer = recipe.build_tokenizer(train)
    counts = collections.Counter("".join(p.text for p in train))
    specials = {"\n", recipe.END_OF_POEM, recipe.UNKNOWN}
    frequent = {c for c, n in counts.items() if n >= recipe.MIN_COUNT}
    assert set(tokenizer.chars) == frequent | specials  # nothing from the held-out poems
    known = [p for p in train if set(p.text) <= frequent]  # a small slice has many rare ones
    assert len(known) >= 10
    for poem in known:
        document = poem.text + "\n" + recipe.END_OF_POEM
        assert tokenizer.decode(tokenizer.encode(document)) == document
    ids = recipe.encode_poems(tokenizer, train)
    text = tokenizer.decode(ids.tolist())
    assert len(ids) == len(text)  # one token per character
    assert text.split(recipe.END_OF_POEM)[1:-1] == [
        "".join(c if c in frequent else recipe.UNKNOWN for c in p.text) + "\n" for p in train
    ]
    unseen = next(c for p in val for c in p.text if c not in counts)  # a held-out poet's char
    assert recipe.UNKNOWN in recipe.poems_text(tokenizer, [p for p in val if unseen in p.text])


def test_samples_stop_at_the_end_mark_and_constraints_give_the_form(recipe, split):
    tokenizer = recipe.build_tokenizer(split[0])
    model = recipe.new_model(tokenizer.vocab_size)  # untrained: the constraints alone
    free = recipe.sample_poems(model, tokenizer, 3, temperature=1.0, seed=0)
    assert len(free) == 3 and not any(recipe.END_OF_POEM in text for text, _ in free)
    by_form = recipe.sample_forms(model, tokenizer, 2, 1.0, seed=0)
    assert list(by_form) == list(recipe.FORMS)
    for form, texts in by_form.items():
        for text in texts:
            report = check_poem(text)
            assert report.form == form, text
            assert report.checks["lines"] and report.checks["chars"]
            assert report.checks["punctuation"]


def test_first_steps_on_a_slice_are_finite_and_decrease(recipe, poems, split):
    vocab_size = recipe.build_tokenizer(split[0]).vocab_size
    losses = recipe.first_steps(3, poems).train_loss
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(vocab_size), abs=0.3)  # uniform at the start
    assert losses[0] > losses[1] > losses[2]


@pytest.mark.slow
def test_first_steps_reproduce_the_shipped_run(recipe):
    if not (SHIPPED / MANIFEST_FILE).is_file():
        pytest.skip(
            "gptlab/assets/poetry_model/ is not shipped yet; "
            "OMP_NUM_THREADS=1 python recipes/poetry_model.py writes it"
        )
    from gptlab.reference import load_reference_model

    manifest = json.loads((SHIPPED / MANIFEST_FILE).read_text(encoding="utf-8"))
    model, tokenizer = load_reference_model(directory=SHIPPED)  # every sha256 checked
    assert {k: model.config.to_dict()[k] for k in recipe.MODEL} == recipe.MODEL
    poems = recipe.load_poems()
    train, _ = recipe.split(poems)
    assert tokenizer.chars == recipe.build_tokenizer(train).chars
    losses = recipe.first_steps(3, poems).train_loss
    assert losses == pytest.approx(manifest["first_train_losses"][:3], rel=1e-4)
