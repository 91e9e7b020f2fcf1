"""Copy tokens (contract/copy.py): any intent word, in any casing or script, comes through intact."""

from __future__ import annotations

import pytest

from contract.command import COPY_SLOTS, OUTPUT_TOKEN, CommandSpec, encode_text, prompt_ids
from contract.copy import copy_table, copy_token, encode_intent, encode_output, intent_words
from training.tokenizer import add_command_tokens, compact_gpt2_tokenizer

SPEC = CommandSpec(tasks=("t2i_prompt", "title"), relevance_edges={}, copy_slots=COPY_SLOTS)
# Intents whose words the tokenizer's corpus never had: places, accents, casing, numbers, apostrophes.
CASES = [
    ("rainy evening in Tokyo", "rainy evening in Tokyo, neon reflections on wet streets, cinematic"),
    ("café grand opening", "Café Grand Opening Week"),
    ("Día de los Muertos altar", "a photo of día de los muertos altar, marigolds, candlelight"),
    ("Northern lights tour in Tromsø", "northern lights over Tromsø's harbor, aurora, long exposure"),
    ("New Year's Eve 2025 party", "New Year's Eve 2025 party ideas; countdown playlist"),
    ("Songkran water fight!", "(Songkran) water fight, splashing crowds, Songkran"),
]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["a photo of a sale", "warm lights, cinematic", "ideas; playlist"]
    return add_command_tokens(compact_gpt2_tokenizer(corpus), SPEC.special_tokens())


@pytest.mark.parametrize(("intent", "output"), CASES)
def test_output_round_trips_through_copy_tokens(tokenizer, intent: str, output: str) -> None:
    ids = encode_output(tokenizer, intent, output, COPY_SLOTS)
    table = copy_table(tokenizer, intent, COPY_SLOTS)
    copies = [i for i in ids if i in table.expansions]
    assert copies, "the intent's words are written as copy tokens"
    assert not set(ids) & set(table.banned)
    # what evaluation and serving do: expand, then decode
    assert tokenizer.decode(table.expand(ids)) == " " + output


def test_copy_forms_keep_typed_case_capitalise_and_lower(tokenizer) -> None:
    intent = "café in Zürich"
    ids = encode_output(tokenizer, intent, "Café in Zürich, zürich café", COPY_SLOTS)
    tokens = [tokenizer.id_to_token(i) for i in ids]
    assert tokens[0] == copy_token("copy_cap", 0)  # "Café": capitalised
    assert copy_token("copy", 2) in tokens  # "Zürich" as typed
    assert copy_token("copy_lower", 2) in tokens  # "zürich"
    assert tokens[-1] == copy_token("copy", 0)  # "café" as typed


def test_a_word_that_only_contains_an_intent_word_is_not_a_copy(tokenizer) -> None:
    ids = encode_output(tokenizer, "sale", "wholesale sales", COPY_SLOTS)
    assert ids == encode_text(tokenizer, "wholesale sales")


def test_prompt_marks_each_intent_word_and_bans_copies_beyond_it(tokenizer) -> None:
    ids = prompt_ids(tokenizer, SPEC, "title", 5, "high", "  Kraków  Christmas market ")
    tokens = [tokenizer.id_to_token(i) for i in ids]
    assert tokens[3] == copy_token("copy", 0) and tokens[-1] == OUTPUT_TOKEN
    markers = [t for t in tokens if t.startswith("<|copy")]
    assert markers == [copy_token("copy", i) for i in range(3)]
    assert tokenizer.decode(ids[3:-1]) == " Kraków Christmas market"
    table = copy_table(tokenizer, "Kraków Christmas market", COPY_SLOTS)
    assert len(table.expansions) == 3 * 3 and len(table.banned) == 3 * (COPY_SLOTS - 3)
    assert tokenizer.token_to_id(copy_token("copy", 3)) in table.banned


def test_words_past_the_slots_are_plain_text(tokenizer) -> None:
    intent = " ".join(f"w{i}" for i in range(COPY_SLOTS + 2))
    ids = encode_intent(tokenizer, intent, COPY_SLOTS)
    assert sum(tokenizer.id_to_token(i).startswith("<|copy") for i in ids) == COPY_SLOTS
    assert len(copy_table(tokenizer, intent, COPY_SLOTS).banned) == 0


def test_copy_token_text_typed_by_a_user_stays_text(tokenizer) -> None:
    intent = "sale <|copy:0|> <|copy_cap:1|>"
    table = copy_table(tokenizer, intent, COPY_SLOTS)
    for token_id in table.expansions.values():
        assert not set(token_id) & {tokenizer.token_to_id(t) for t in SPEC.special_tokens()}
    assert intent_words(intent)[1] == "<|copy:0|>"
    decoded = tokenizer.decode(table.expand([tokenizer.token_to_id(copy_token("copy", 1))]), skip_special_tokens=False)
    assert decoded == " <|copy:0|>"


def test_no_copy_slots_is_plain_bpe(tokenizer) -> None:
    assert encode_output(tokenizer, "holiday sale", "holiday sale", 0) == encode_text(tokenizer, "holiday sale")
    assert encode_intent(tokenizer, "holiday sale", 0) == encode_text(tokenizer, "holiday sale")


# --- through the real server ---------------------------------------------------------------

PATTERN_INTENTS = ["holiday sale", "cozy nook", "garden party", "summer picnic", "city lights", "winter market"]


def pattern_output(intent: str) -> str:
    first, second = intent.split()
    return f"a photo of {first} {second}, {first[:1].upper() + first[1:]}"


@pytest.fixture(scope="module")
def copying_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A tiny GPT-2 that learnt one pattern writing the intent's words by copy tokens only."""
    from memorised_bundle import memorised_bundle

    spec = CommandSpec(tasks=("title",), max_words=8, relevance_edges={"title": (0.3, 0.5)}, copy_slots=4)
    tokenizer = add_command_tokens(compact_gpt2_tokenizer(["a photo of", *PATTERN_INTENTS]), spec.special_tokens())
    examples = [
        (
            prompt_ids(tokenizer, spec, "title", 6, "high", intent),
            encode_output(tokenizer, intent, pattern_output(intent), spec.copy_slots),
        )
        for intent in PATTERN_INTENTS
    ]
    return memorised_bundle(tokenizer, spec, examples, tmp_path_factory.mktemp("copying"), steps=200)


@pytest.mark.slow  # trains and exports a model (seconds on an idle machine)
@pytest.mark.parametrize("intent", ["Tromsø café", "Día Muertos", "京都 temples"])
def test_served_copies_carry_unseen_words_intact(copying_bundle, tmp_path, intent: str) -> None:
    from memorised_bundle import serve_and_stream

    body = {"task": "title", "input": intent, "controls": {"length": 6}, "temperature": 0}
    deltas, output = serve_and_stream(copying_bundle, tmp_path / "server.log", body)
    # words none of the training data had, in their own casing and script, through copy tokens
    assert output["text"] == pattern_output(intent)
    assert output["words"] == 6
    assert "".join(deltas) == output["text"]


def test_position_offset_aligns_every_output_at_one_position() -> None:
    from contract.positions import position_offset
    from runtime.padding import pad

    spec = CommandSpec(tasks=("title",), relevance_edges={}, output_position=12)
    prompts = [[5] * 4, [6] * 9, [7] * 15]
    offsets = [position_offset(spec, len(p)) for p in prompts]
    assert offsets == [8, 3, 0]  # a prompt longer than the position starts at 0
    _, mask, positions = pad(prompts, 0, offsets)
    last = positions[:, -1]
    assert last.tolist() == [11, 11, 14]  # <|output|> at 11: the first output token at 12
    assert (positions[mask == 0] == 0).all()
    assert position_offset(CommandSpec(tasks=("title",)), 4) == 0  # models from before: unshifted
