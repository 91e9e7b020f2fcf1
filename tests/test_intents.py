"""The shipped intent corpus: size, distinctness, domains, and no leakage across splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from training import generate
from training.generate import DEFAULT_PER_INTENT, DEFAULT_TASKS_PER_INTENT
from training.intents import CorpusError, Intent, check_no_leakage, leak_key, load_intents, split_of
from training.intents.corpus import DomainError, load_domains, typed_casing
from training.intents.realistic import load_realistic_eval
from training.records import dedup_key, iter_records
from training.tasks import load_tasks


def test_corpus_is_large_distinct_and_varied() -> None:
    intents = load_intents()
    assert len(intents) >= 20_000
    assert len({dedup_key(i.text) for i in intents}) == len(intents)
    domains = Counter(i.domain for i in intents)
    assert len(domains) >= 40 and min(domains.values()) >= 150
    assert all(1 <= len(i.text.split()) <= 8 for i in intents)  # short, as users type them
    texts = [i.text for i in intents]

    def share(test) -> float:
        return sum(map(test, texts)) / len(texts)

    # what users type: real casing, proper nouns, accents, numbers, hyphens, apostrophes
    assert share(lambda t: t != t.lower()) > 0.4
    assert share(lambda t: t == t.lower()) > 0.2
    assert share(lambda t: not t.isascii()) > 0.02
    assert share(lambda t: any(c.isdigit() for c in t)) > 0.02
    assert share(lambda t: "-" in t) > 0.02 and share(lambda t: "'" in t) > 0.005


def test_every_domain_has_intents_and_teacher_words() -> None:
    domains = load_domains()
    with_intents = {i.domain for i in load_intents()}
    for name, domain in domains.items():
        assert {"scenes", "keywords", "moods"} <= set(domain.teacher), name
        assert name == "general" or name in with_intents, name


def test_a_bad_domain_file_is_refused_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "general.toml").write_text('description = "g"\n')
    (tmp_path / "broken.toml").write_text(
        'description = "b"\n[[groups]]\npattern = "{head}"\nmodifiers = ["a"]\nheads = ["b"]\n'
    )
    with pytest.raises(DomainError, match="broken.*pattern"):
        load_domains(tmp_path)
    (tmp_path / "broken.toml").write_text("description = \n")
    with pytest.raises(DomainError, match="broken.toml"):
        load_domains(tmp_path)


def test_typed_casing_is_stable_and_keeps_inner_capitals() -> None:
    variants = {typed_casing(f"vegan brunch in Lisbon {i}") for i in range(200)}
    assert any(v.startswith("Vegan Brunch In") for v in variants)  # title case
    assert any(v.startswith("vegan brunch in lisbon") for v in variants)  # all lower
    assert any(v.startswith("vegan brunch in Lisbon") for v in variants)  # as written
    assert typed_casing("iPhone case") == typed_casing("iPhone case")
    assert all("IPhone" not in typed_casing(f"iPhone case {i}") for i in range(100))


def test_the_realistic_evaluation_set_is_held_out() -> None:
    held_out = {leak_key(i.text) for i in load_realistic_eval()}
    assert not held_out & {leak_key(i.text) for i in load_intents()}


def test_splits_are_by_intent_without_leakage() -> None:
    intents = load_intents()
    check_no_leakage(intents)
    splits = Counter(i.split for i in intents)
    assert set(splits) == {"train", "val", "test"}
    assert 0.75 < splits["train"] / len(intents) < 0.85 and min(splits["val"], splits["test"]) > 200
    for split in ("val", "test"):  # every domain is evaluated on unseen intents
        assert {i.domain for i in intents if i.split == split} == {i.domain for i in intents}


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


def test_tasks_per_intent_keeps_every_intent_and_balances_the_tasks(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path), "--limit-intents", "400", "--tasks-per-intent", "2"]) == 0
    tasks_of: dict[str, set[str]] = {}
    for record in iter_records(tmp_path):
        tasks_of.setdefault(record["intent"], set()).add(record["task"])
    assert len(tasks_of) == 400 and all(len(t) == 2 for t in tasks_of.values())
    per_task = Counter(t for tasks in tasks_of.values() for t in tasks)
    assert len(per_task) == 4 and min(per_task.values()) > 0.8 * 200  # about 400 x 2 / 4 each
    # asking for more tasks later keeps what was drawn: a larger count only adds requests
    names = sorted(per_task)
    for intent, tasks in tasks_of.items():
        assert tasks <= generate.intent_tasks(names, intent, 3, generate.DEFAULT_SEED)


def test_default_dataset_size_suits_the_first_run() -> None:
    """All intents x the default tasks per intent x --per-intent default: 30k-60k samples, scored
    in about 2 minutes, as many as the first run's 8 minutes of training get through."""
    tasks = min(len(load_tasks()), DEFAULT_TASKS_PER_INTENT)
    size = len(load_intents()) * tasks * DEFAULT_PER_INTENT
    assert 30_000 <= size <= 60_000
