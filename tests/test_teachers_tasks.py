"""The task registry as data, and the parse/validity rules every teacher's answers go through."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from training import generate
from training.records import iter_records
from training.tasks import TASKS_DIR, TaskError, load_tasks
from training.teachers.parsing import align_outputs, clean_output, parse_reply, reject_reason


def test_registry_has_the_four_tasks_with_everything_a_teacher_needs() -> None:
    tasks = load_tasks()
    assert {"t2i_prompt", "search_queries", "title", "tags"} <= set(tasks)
    for task in tasks.values():
        assert task.description and task.system_prompt and task.few_shot
        assert set(task.rewards) == {"length", "relevance"}
        assert 1 <= task.target_words[0] < task.target_words[1] <= task.validity.max_words <= 48
        assert task.procedural is not None
        for shot in task.few_shot:  # the few-shot examples obey the task's own rules
            for output in shot.outputs:
                assert reject_reason(task, clean_output(task, output["text"])) is None, output


def test_adding_a_task_is_adding_a_file(tmp_path: Path) -> None:
    tasks_dir = tmp_path / "tasks"
    shutil.copytree(TASKS_DIR, tasks_dir, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    slogan = (tasks_dir / "title.toml").read_text().replace("A short, catchy title", "A short slogan")
    (tasks_dir / "slogan.toml").write_text(slogan)
    assert load_tasks(["slogan"], tasks_dir)["slogan"].description.startswith("A short slogan")
    out = tmp_path / "s"
    code = generate.main(
        ["--out", str(out), "--tasks-dir", str(tasks_dir), "--tasks", "slogan", "--limit-intents", "10"]
    )
    assert code == 0
    records = list(iter_records(out))
    assert len(records) >= 9 and {r["task"] for r in records} == {"slogan"}  # 10 intents x 1 output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('description = "x"', "malformed task file"),
        ("not toml [", "slogan.toml"),
        (
            'description="d"\nsystem_prompt="s"\ntarget_words=[3, 2]\n',
            "not a range",
        ),
        ('description="d"\nsystem_prompt="s"\ntarget_words=[1, 2]\nrewards=["beauty"]\n', "unknown rewards"),
        ('description="d"\nsystem_prompt="s"\ntarget_words=[1, 2]\n[validity]\nforbid=["(unclosed"]\n', "bad regex"),
    ],
)
def test_broken_task_files_are_refused_with_a_reason(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "slogan.toml").write_text(content)
    with pytest.raises(TaskError, match=message):
        load_tasks(tasks_dir=tmp_path)


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--tasks", "poem"], 2, "unknown task(s) ['poem']"),
        (["--per-intent", "0"], 2, "must be at least 1"),
        (["--tasks-per-intent", "-1"], 2, "must be 0 (every task) or more"),
        (["--intents", "/no/such/file.txt"], 2, "does not exist"),
        (["--teacher", "openai"], 2, "needs --model"),
        (["--teacher", "openai", "--model", "m", "--concurrency", "0"], 2, "must be positive"),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], code: int, message: str
) -> None:
    assert generate.main(["--out", str(tmp_path), *flags]) == code
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


def test_out_that_is_a_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert generate.main(["--out", str(tmp_path / "file"), "--limit-intents", "2"]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_parse_reply_strips_numbering_bullets_quotes_and_preamble() -> None:
    task = load_tasks(["title"])["title"]
    reply = (
        "Sure! Here are 5 titles:\n\n"
        '1. "Holiday Sale Now"\n'
        "2) **Winter Deals**\n"
        "- Gifts Worth Giving.\n"
        "  * \u201cQuiet   Mountain Mornings\u201d  \n"
        "#5: The Big Sale (6 words, high)\n"
        "Titles:\n"
    )
    assert parse_reply(task, reply) == [
        "Holiday Sale Now",
        "Winter Deals",
        "Gifts Worth Giving",
        "Quiet Mountain Mornings",
        "The Big Sale",
    ]


def test_numbered_answers_align_with_their_targets() -> None:
    task = load_tasks(["title"])["title"]
    reply = "Here you go:\n1. Holiday Sale\n3. Quiet Mornings\n3. Quiet Mornings Again\n7. Way Out\n"
    assert align_outputs(task, reply, 4) == (["Holiday Sale", None, "Quiet Mornings", None], 2)
    assert align_outputs(task, "Holiday Sale\nWinter Deals\nGift Ideas", 2) == (["Holiday Sale", "Winter Deals"], 1)
    assert align_outputs(task, "Holiday Sale", 3) == (["Holiday Sale", None, None], 0)


def test_search_queries_separators_are_normalised_and_required() -> None:
    task = load_tasks(["search_queries"])["search_queries"]
    assert clean_output(task, "3. holiday sale ;best deals;  gift ideas;") == "holiday sale; best deals; gift ideas"
    assert reject_reason(task, "holiday sale deals") == "malformed_output"  # one query is not a list


def test_reject_reasons() -> None:
    task = load_tasks(["t2i_prompt"])["t2i_prompt"]
    assert reject_reason(task, "") == "empty"
    assert reject_reason(task, "two words") == "too_short"
    assert reject_reason(task, " ".join(["word"] * 49)) == "too_long"
    assert reject_reason(task, "As an AI I cannot draw, sorry") == "forbidden"
    assert reject_reason(task, "a photo of a sale, see https://example.com") == "forbidden"
    assert reject_reason(task, "a festive storefront, warm lights") is None
