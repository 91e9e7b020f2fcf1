"""Positions (contract/positions.py): what each token's position id is, and that training, the
runtime's decode loop and the server's scheduler give the same token the same position."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from contract.command import COPY_SLOTS, PLAIN_WORDS, CommandError, CommandSpec, prompt_ids
from contract.copy import copy_table, encode_output
from contract.positions import (
    ALIGNED,
    COUNTDOWN,
    check_fits,
    context_room,
    countdown,
    position_offset,
    prompt_positions,
    sequence_positions,
    word_start_ids,
)
from runtime.decode import generate
from runtime.onnx_runner import OnnxRunner, Prompts
from runtime.sampler import SamplingParams
from server.engine.request import Event, GenerationRequest
from server.engine.scheduler import Scheduler
from server.metrics import Metrics
from training.tokenizer import add_command_tokens, compact_gpt2_tokenizer

SPEC = CommandSpec(
    tasks=("t2i_prompt",),
    max_words=40,
    relevance_edges={"t2i_prompt": (0.3, 0.5)},
    copy_slots=COPY_SLOTS,
    output_position=32,
    positions=COUNTDOWN,
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    corpus = ["a poster of Tokyo at night, neon, 8k", "café opening in Tromsø"]
    return add_command_tokens(compact_gpt2_tokenizer(corpus), SPEC.special_tokens())


def test_countdown_positions_fall_by_one_at_each_word(tokenizer: Tokenizer) -> None:
    intent, output = "Tokyo at night", "a poster of Tokyo at night, neon glow, 8k"
    ids = encode_output(tokenizer, intent, output, SPEC.copy_slots)
    counter = countdown(SPEC, tokenizer)
    assert counter is not None
    positions = counter.output_positions(9, ids)
    starts = word_start_ids(tokenizer)
    assert sum(t in starts for t in ids) == 9  # copy tokens and " word" tokens: one per word
    for previous, token, position in zip([32 + 9] + positions, ids, positions, strict=False):
        assert position == previous - (token in starts)  # a word's later pieces keep its position
    assert positions[-1] == 32  # no word left after the last
    assert counter.output_positions(4, ids)[-1] == 32  # past the asked length: clamped, never below


def test_a_long_prompt_never_reaches_the_output_positions() -> None:
    assert position_offset(SPEC, 40) == -8
    assert prompt_positions(SPEC, 40) == [0] * 9 + list(range(1, 32))
    assert prompt_positions(SPEC, 5) == list(range(27, 32))
    aligned = CommandSpec(tasks=("title",), output_position=32)
    assert prompt_positions(aligned, 40) == list(range(40))  # aligned models keep counting up
    # the room an output has is what the KV cache can still hold, whatever the positions
    assert context_room(SPEC, 128, 40) == 88  # its first 9 tokens share position 0: no room made
    assert context_room(SPEC, 128, 5) == context_room(aligned, 128, 5) == 96  # starts at 27, output at 32


def test_the_scheme_is_saved_with_the_spec_and_old_specs_count_up() -> None:
    assert CommandSpec.from_dict(SPEC.to_dict()) == SPEC
    old = {k: v for k, v in SPEC.to_dict().items() if k != "positions"}
    assert CommandSpec.from_dict(old).positions == ALIGNED
    with pytest.raises(CommandError, match="output position"):
        CommandSpec(tasks=("title",), format=PLAIN_WORDS, positions=COUNTDOWN)
    with pytest.raises(CommandError, match="unknown position scheme"):
        CommandSpec(tasks=("title",), output_position=8, positions="sideways")
    with pytest.raises(ValueError, match="reach 72"):
        check_fits(SPEC, 64)


class RecordingRunner(OnnxRunner):
    """The real runner; it also keeps the position ids of every forward, to compare."""

    seen: list[np.ndarray]
    joined: list[np.ndarray]  # the positions of prompts prefilled in a decode step (mixed graph)

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: Any,
        prompts: Prompts | None = None,
    ) -> Any:
        self.seen.append(position_ids.copy())
        if prompts is not None:
            self.joined.append(prompts.position_ids.copy())
        return super().forward(input_ids, attention_mask, position_ids, past, prompts)


@pytest.fixture(scope="module")
def recording(tiny_bundle: Path) -> RecordingRunner:
    runner = RecordingRunner(tiny_bundle, variant="fp32", provider="cpu", intra_op_threads=1)
    assert runner.manifest.command.positions == COUNTDOWN  # the test fixture is a countdown model
    return runner


def training_positions(
    runner: OnnxRunner, tokenizer: Tokenizer, prompt: list[int], words: int, out: list[int]
) -> list[int]:
    spec = runner.manifest.command
    return sequence_positions(spec, countdown(spec, tokenizer), len(prompt), words, out)


def test_decode_loop_and_scheduler_feed_the_positions_training_uses(recording: RecordingRunner) -> None:
    tokenizer = Tokenizer.from_file(str(recording.bundle_dir / "tokenizer.json"))
    spec = recording.manifest.command
    intent, words = "Northern lights tour in Tromsø", 12
    prompt = prompt_ids(tokenizer, spec, spec.tasks[0], words, "high", intent)
    banned = copy_table(tokenizer, intent, spec.copy_slots).banned
    params = SamplingParams(temperature=1.0, top_p=1.0)

    # the runtime's decode loop (evaluation, export checks)
    recording.seen = []
    decoded = generate(
        recording,
        [prompt],
        20,
        None,
        params,
        row_never=[banned],
        offsets=[position_offset(spec, len(prompt))],
        countdown=countdown(spec, tokenizer),
        words=[words],
    )
    out = decoded.generations[0].ids
    fed = np.concatenate([p[0] for p in recording.seen]).tolist()
    assert fed == training_positions(recording, tokenizer, prompt, words, out)[: len(fed)]
    assert len(set(fed[len(prompt) :])) > 1  # it did count down

    # the server's scheduler, with a second request joining mid-way (in "r"'s decode step)
    recording.seen, recording.joined = [], []
    scheduler = Scheduler(recording, tokenizer, Metrics("test"), max_batch_size=4)
    events: list[Event] = []
    offset = position_offset(spec, len(prompt))
    scheduler.add(
        GenerationRequest(
            "r", prompt, 1, params, 20, events.append, 0, never=banned, position_offset=offset, words=words
        )
    )
    scheduler.step()
    sequence = scheduler.active["r"].sequences[0]
    other = prompt_ids(tokenizer, spec, spec.tasks[0], 3, "low", "tea")
    other_offset = position_offset(spec, len(other))
    scheduler.add(GenerationRequest("o", other, 1, params, 5, events.append, 1, position_offset=other_offset, words=3))
    while scheduler.has_work():
        scheduler.step()
    generated = sequence.generated
    assert recording.seen[0][0, -len(prompt) :].tolist() == prompt_positions(spec, len(prompt))
    decode = [int(p[0, 0]) for p in recording.seen[1:] if p.shape[1] == 1]  # request "r" keeps row 0
    expected = training_positions(recording, tokenizer, prompt, words, generated)[len(prompt) :]
    assert len(generated) > 5 and decode[: len(generated) - 1] == expected[: len(generated) - 1]
    assert recording.mixed_prefill and [p.tolist() for p in recording.joined] == [[prompt_positions(spec, len(other))]]
