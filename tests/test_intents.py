"""The shipped intent corpus: size, distinctness, domains, and no leakage across splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from training import generate
from training.generate import DEFAULT_PER_INTENT
from training.intents import CorpusError, Intent, check_no_leakage, leak_key, load_intents, split_of
from training.intents.build_corpus import build
from training.records import dedup_key, iter_records
from training.tasks import load_tasks


def test_corpus_is_large_distinct_and_varied() -> None:
    intents = load_intents()
    assert len(intents) >= 3000
    assert len({dedup_key(i.text) for i in intents}) == len(intents)
    domains = Counter(i.domain for i in intents)
    assert len(domains) >= 15 and min(domains.values()) >= 50
    assert all(1 <= len(i.text.split()) <= 6 for i in intents)  # short, as users type them


def test_splits_are_by_intent_without_leakage() -> None:
    intents = load_intents()
    check_no_leakage(intents)
    splits = Counter(i.split for i in intents)
    assert set(splits) == {"train", "val", "test"}
    assert 0.75 < splits["train"] / len(intents) < 0.85 and min(splits["val"], splits["test"]) > 200
    for split in ("val", "test"):  # every domain is evaluated on unseen intents
        assert {i.domain for i in intents if i.split == split} == {i.domain for i in intents}


def test_shipped_file_is_what_the_builder_makes() -> None:
    assert build() == load_intents()  # regenerate with: python -m training.intents.build_corpus


def test_leak_key_ignores_case_order_punctuation_and_plurals() -> None:
    assert leak_key("Holiday Sale") == leak_key("sales, holiday") == leak_key("  holiday   SALE ")
    assert leak_key("holiday sale") != leak_key("holiday party")
    assert split_of("Holiday Sales") == split_of("sale holiday")


def test_leakage_and_duplicates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="leak across splits"):
        check_no_leakage([Intent("holiday sale", "x", "train"), Intent("Holiday Sales", "x", "test")])
    path = tmp_path / "intents.txt"
    path.write_text("holiday sale\nHoliday  Sale\n")
    with pytest.raises(CorpusError, match="repeats 1 intents"):
        load_intents(path)
    path.write_text("holiday sale\tseasons\tdev\n")
    with pytest.raises(CorpusError, match="split 'dev'"):
        load_intents(path)


def test_plain_intent_file_gets_domains_and_splits(tmp_path: Path) -> None:
    path = tmp_path / "intents.txt"
    path.write_text("# my intents\nholiday sale\n\ncozy reading nook\n")
    intents = load_intents(path)
    assert [i.text for i in intents] == ["holiday sale", "cozy reading nook"]
    assert all(i.domain == "general" and i.split == split_of(i.text) for i in intents)


def test_generated_records_keep_every_intent_in_one_split(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path), "--limit-intents", "400", "--per-intent", "2"]) == 0
    splits_by_key: dict[str, set[str]] = {}
    corpus = {i.text: i.split for i in load_intents()}
    for record in iter_records(tmp_path):
        assert record["split"] == corpus[record["intent"]]
        splits_by_key.setdefault(leak_key(record["intent"]), set()).add(record["split"])
    assert all(len(splits) == 1 for splits in splits_by_key.values())
    assert {s for splits in splits_by_key.values() for s in splits} == {"train", "val", "test"}


def test_default_dataset_size_suits_the_first_run() -> None:
    """All tasks x all intents x --per-intent default: 40k-60k samples, scored in under ~3 min."""
    size = len(load_intents()) * len(load_tasks()) * DEFAULT_PER_INTENT
    assert 40_000 <= size <= 60_000
