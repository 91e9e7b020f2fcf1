"""The realistic evaluation set: what it must hold to stand for real users' intents."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from training.intents import leak_key
from training.intents.realistic import key_words, load_realistic_eval


def test_the_set_is_large_varied_and_typed_like_users_type() -> None:
    intents = load_realistic_eval()
    texts = [i.text for i in intents]
    assert len(texts) >= 300
    domains = Counter(i.domain for i in intents)
    assert len(domains) >= 30 and min(domains.values()) >= 5
    assert all(2 <= len(t.split()) <= 8 for t in texts)
    assert len({leak_key(t) for t in texts}) == len(texts)  # no two are the same intent in disguise

    def share(test) -> float:
        return sum(map(test, texts)) / len(texts)

    assert share(lambda t: t != t.lower()) >= 0.4  # proper nouns, real casing
    assert share(lambda t: t == t.lower()) >= 0.1
    assert share(lambda t: not t.isascii()) >= 0.08  # café, Zürich, São Paulo
    assert share(lambda t: any(c.isdigit() for c in t)) >= 0.05
    assert share(lambda t: "-" in t) >= 0.03 and share(lambda t: "'" in t) >= 0.03


def test_loader_names_the_file_and_line_of_a_bad_entry(tmp_path: Path) -> None:
    path = tmp_path / "set.tsv"
    path.write_text("# intent\tdomain\nrainy evening in Tokyo\ttravel\nno domain here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="set.tsv:3"):
        load_realistic_eval(path)
    path.write_text("rainy evening in Tokyo\ttravel\nRainy  Evening in tokyo\ttravel\n", encoding="utf-8")
    with pytest.raises(ValueError, match="repeats line 1"):
        load_realistic_eval(path)


def test_key_words_are_proper_nouns_accents_and_numbers() -> None:
    assert key_words("Día de los Muertos altar, 2025!") == ["Día", "Muertos", "2025"]
    assert key_words("café grand opening") == ["café"]
    assert key_words("holiday sale") == []
    assert key_words("(iPhone) launch") == ["iPhone"]
