"""The runtime package: the import rule, the one decode loop, evaluation == serving, and
incremental detokenization (also through the real server's SSE stream)."""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_process import ServerProcess
from tokenizers import Tokenizer

from contract.command import CommandSpec, encode_text, normalize_text, prompt_ids
from contract.manifest import load_manifest
from runtime.cpus import available_cpus, cgroup_cpu_quota
from runtime.decode import NonFiniteLogits, generate
from runtime.detokenize import IncrementalDetokenizer
from runtime.kv_cache import BatchCache
from runtime.onnx_runner import CPU, CUDA, SINGLE_THREAD_BELOW_BYTES, OnnxRunner, Prompts, choose_intra_op_threads
from runtime.padding import pad
from runtime.sampler import SamplingParams
from tests.poisoned_bundle import poisoned_bundle

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "runtime", "server", "training", "export", "loadtest")
# Who may import whom: contract <- runtime <- {server, export, training}; nobody imports server.
ALLOWED = {
    "contract": {"contract"},
    "runtime": {"contract", "runtime"},
    "server": {"contract", "runtime", "server"},
    "training": {"contract", "runtime", "training"},
    "export": {"contract", "runtime", "training", "export"},
    # loadtest/models.py builds the benchmark's GPT-2 small with training's own model code
    "loadtest": {"contract", "training", "loadtest"},
}
NEVER_IN = {"runtime": {"torch", "transformers"}, "server": {"torch", "transformers"}, "contract": {"numpy", "torch"}}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports, at any depth (function-local ones too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_imports_run_one_way() -> None:
    broken = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules = imported_modules(path)
            for module in sorted(modules & set(PACKAGES) - ALLOWED[package]):
                broken.append(f"{path.relative_to(ROOT)} imports {module}")
            for module in sorted(modules & NEVER_IN.get(package, set())):
                broken.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not broken, "\n".join(broken)


def test_import_rule_sees_function_local_imports(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from server.engine import engine\n    import torch.nn\n")
    assert imported_modules(source) == {"server", "torch"}


# --- the decode loop ------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner(tiny_bundle: Path) -> OnnxRunner:
    return OnnxRunner(tiny_bundle, variant="fp32", provider="cpu", intra_op_threads=1)


def test_greedy_generate_is_the_argmax_of_each_step(runner: OnnxRunner) -> None:
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    decoded = generate(runner, prompts, 6, eos_id=None, keep_logits=True)
    assert decoded.logits is not None and decoded.logits.shape == (6, 2, runner.vocab_size)
    assert [g.ids for g in decoded.generations] == decoded.logits.argmax(-1).T.tolist()
    assert len(decoded.forward_s) == 6 and all(s > 0 for s in decoded.forward_s)
    # Teacher forcing feeds the given tokens instead, and still reports every step's logits.
    forced = np.full((2, 6), 3, np.int64)
    assert [g.ids for g in generate(runner, prompts, 6, eos_id=None, forced=forced).generations] == forced.tolist()


def test_generate_refuses_to_go_on_from_logits_that_are_not_finite(tiny_bundle: Path, tmp_path: Path) -> None:
    """Evaluation and the export's checks decode with `generate`: a prompt the model gives NaN
    logits (token 9's embedding is NaN here) stops it with the prompt and the token named, rather
    than feeding the sampler's NO_TOKEN (-1) back as a token. Teacher forcing needs no sampling."""
    pytest.importorskip("onnx")
    runner = OnnxRunner(poisoned_bundle(tiny_bundle, tmp_path / "poisoned", "fp32", 9), "fp32", "cpu")
    prompts = [[5, 6, 7], [8, 9, 10]]
    with pytest.raises(NonFiniteLogits, match="prompt 1: .* not finite .* at output token 1"):
        generate(runner, prompts, 4, eos_id=None)
    assert generate(runner, prompts[:1], 4, eos_id=None).generations[0].ids  # the other prompt decodes
    forced = np.full((2, 4), 3, np.int64)
    assert [g.ids for g in generate(runner, prompts, 4, eos_id=None, forced=forced).generations] == forced.tolist()


def test_generate_stops_rows_at_eos_and_never_emits_banned_tokens(runner: OnnxRunner) -> None:
    prompts = [[5, 6, 7]] * 4
    free = generate(runner, prompts, 12, eos_id=None, params=SamplingParams(1.0, 1.0))
    banned = sorted({t for g in free.generations for t in g.ids[:3]})
    eos = free.generations[0].ids[1]  # a token the first row writes second: its row must stop there
    decoded = generate(runner, prompts, 12, eos_id=eos, params=SamplingParams(1.0, 1.0))
    assert decoded.generations[0].ids == free.generations[0].ids[:1] and decoded.generations[0].finished
    never = [t for t in banned if t != eos]
    for g in generate(runner, prompts, 12, eos_id=None, params=SamplingParams(1.0, 1.0), never=never).generations:
        assert not set(g.ids) & set(never)


# --- evaluation and serving give the same tokens ---------------------------------------


@pytest.fixture(scope="module")
def fp32_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("runtime_server") / "server.log"
    process = ServerProcess(tiny_bundle, log, variant="fp32", intra_op_threads=1)
    yield process
    process.stop()


def test_evaluation_and_serving_sample_the_same_tokens(tiny_bundle: Path, fp32_server: ServerProcess) -> None:
    """The same command, seed and (bundle default) sampling parameters through the eval path
    (training.evaluate.run_samples) and through the real server on loopback: the same texts.
    The tiny bundle's random weights give near-flat logits, so any difference between the two
    samplers, their seeding or their banned tokens would show."""
    from training.evaluate import Sample, load_model, run_samples

    model = load_model(None, tiny_bundle, "fp32")
    n, seed = 3, 11
    commands = [("t2i_prompt", "holiday sale", 12, "high"), ("title", "cozy reading nook", 5, "low")]
    samples = [Sample("unseen", *command, request=r) for r, command in enumerate(commands) for _ in range(n)]
    run_samples(model, samples, n=n, batch_size=n, seed=seed)
    assert model.generation.temperature > 0  # sampled, not greedy: the seeding is under test
    for r, (task, intent, length, level) in enumerate(commands):
        body = {"task": task, "input": intent, "controls": {"length": length, "relevance": level}, "n": n}
        response = httpx.post(f"{fp32_server.url}/v1/generate", json={**body, "seed": seed + r}, timeout=60)
        assert response.status_code == 200, response.text
        served = [normalize_text(o["text"]) for o in response.json()["outputs"]]  # as eval normalises
        evaluated = [s.text for s in samples[r * n : (r + 1) * n]]
        assert served == evaluated
        assert len(set(served)) > 1  # the n samples differ: each has its own generator


# --- incremental detokenization -------------------------------------------------------

MULTIBYTE = [
    "Café crème brûlée à Zürich",
    "東京の夜景 と 富士山",
    "party time 🎉🎈 with 👩‍👩‍👧 family",
    "naïve São Paulo ñandú",
]


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    from training.tokenizer import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def compact() -> Tokenizer:
    """The default student's tokenizer: an ASCII corpus, so every accented letter is bytes."""
    from training.tokenizer import compact_gpt2_tokenizer

    return compact_gpt2_tokenizer(["holiday sale", "cozy reading nook"])


@pytest.mark.parametrize("name", ["gpt2", "compact"])
def test_incremental_deltas_are_whole_characters_and_add_up(name: str, request: pytest.FixtureRequest) -> None:
    tokenizer: Tokenizer = request.getfixturevalue(name)
    split = 0
    for text in MULTIBYTE:
        ids = tokenizer.encode(text).ids
        split += any("\ufffd" in tokenizer.decode([i]) for i in ids)  # a character's bytes over several tokens
        for chunk in (1, 2, 3):  # several ids per push: a copy token expands into a word's ids
            detokenizer = IncrementalDetokenizer(tokenizer)
            deltas = [detokenizer.push(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
            assert "".join(deltas) == detokenizer.text == tokenizer.decode(ids) == text
            assert not any("\ufffd" in d for d in deltas)
    assert split >= (2 if name == "gpt2" else len(MULTIBYTE))  # the case under test is there


def test_detokenizer_holds_an_unfinished_character(gpt2: Tokenizer) -> None:
    ids = gpt2.encode(" 🎉").ids
    assert len(ids) > 1
    detokenizer = IncrementalDetokenizer(gpt2)
    assert [detokenizer.push([i]) for i in ids[:-1]][-1] == ""
    assert detokenizer.push(ids[-1:]).endswith("🎉")
    unfinished = IncrementalDetokenizer(gpt2)
    assert unfinished.push(ids[:-1]) + unfinished.flush() == gpt2.decode(ids[:-1])  # the end shows what is left


TARGET = "Café 東京 🎉 naïve ñandú"
TASKS = ("t2i_prompt", "title")


@pytest.fixture(scope="module")
def multibyte_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 trained for a few seconds to write TARGET (accents, CJK, an emoji, all split
    across byte tokens) for one command."""
    from memorised_bundle import memorised_bundle

    from training.tokenizer import add_command_tokens, compact_gpt2_tokenizer

    spec = CommandSpec(tasks=TASKS, max_words=16, relevance_edges={t: (0.3, 0.5) for t in TASKS})
    tokenizer = add_command_tokens(compact_gpt2_tokenizer(["holiday sale", TARGET]), spec.special_tokens())
    prompt = prompt_ids(tokenizer, spec, "title", 5, "high", "holiday sale")
    return memorised_bundle(tokenizer, spec, [(prompt, encode_text(tokenizer, TARGET))], tmp_path_factory.mktemp("mb"))


@pytest.mark.slow  # trains and exports a model (seconds on an idle machine)
def test_streamed_deltas_add_up_to_multibyte_text(multibyte_bundle: Path, tmp_path: Path) -> None:
    from memorised_bundle import serve_and_stream

    ids = Tokenizer.from_file(str(multibyte_bundle / load_manifest(multibyte_bundle).tokenizer_file))
    assert any("\ufffd" in ids.decode([i]) for i in encode_text(ids, TARGET))  # characters split across tokens
    body = {"task": "title", "input": "holiday sale", "controls": {"length": 5}, "temperature": 0}
    deltas, output = serve_and_stream(multibyte_bundle, tmp_path / "server.log", body)
    final = output["text"]
    assert final == normalize_text(TARGET)  # the memorised text, so every multi-byte character is there
    # (How many deltas arrive depends on the reader: one that falls behind gets them merged.)
    assert "".join(deltas) == final
    assert not any("\ufffd" in d for d in deltas)


@pytest.mark.slow
def test_every_delta_the_engine_emits_ends_on_a_whole_character(multibyte_bundle: Path) -> None:
    """Each delta as the scheduler emits it, before any merging for a slow reader: several of
    them, each ending on a whole character, adding up to the final text."""
    from server.engine.request import Delta, GenerationRequest, SampleDone
    from server.engine.scheduler import Scheduler
    from server.metrics import Metrics

    runner = OnnxRunner(multibyte_bundle, variant="fp32", provider="cpu", intra_op_threads=1)
    tokenizer = Tokenizer.from_file(str(multibyte_bundle / runner.manifest.tokenizer_file))
    events: list[object] = []
    prompt = prompt_ids(tokenizer, runner.manifest.command, "title", 5, "high", "holiday sale")
    greedy = SamplingParams(temperature=0.0, top_p=1.0)
    request = GenerationRequest("r", prompt, 1, greedy, max_new_tokens=40, sink=events.append, stream=True)
    scheduler = Scheduler(runner, tokenizer, Metrics("test"), max_batch_size=1)
    scheduler.add(request)
    while scheduler.has_work():
        scheduler.step()
    deltas = [e.text for e in events if isinstance(e, Delta)]
    final = next(e for e in events if isinstance(e, SampleDone)).text
    assert normalize_text(final) == normalize_text(TARGET)
    assert "".join(deltas) == final and len(deltas) > 3
    assert not any("\ufffd" in d for d in deltas)


# A second 20 MB block after the first was freed: page faults show whether glibc kept the memory.
ALLOCATE_TWICE = """
import resource, sys
import numpy as np
from runtime.allocator import retain_freed_memory
retained = retain_freed_memory() if sys.argv[1] == "retain" else False
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(20 * 2**20 // 8)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del block
print(retained, faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_is_reused_without_page_faults() -> None:
    """runtime/allocator.py: a freed cache-sized block is reused (no faults) once retained;
    without it every new block faults its pages in; an operator's MALLOC_* setting wins."""

    def run(mode: str, **env: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", ALLOCATE_TWICE, mode], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True)  # fmt: skip
        retained, faults = out.stdout.split()
        return retained, int(faults)

    retained, faults = run("retain")
    assert retained == "True" and faults < 50
    assert run("leave")[1] > 200  # 20 MB is ~5,000 pages
    assert run("retain", MALLOC_TRIM_THRESHOLD_="100000")[0] == "False"


@pytest.mark.parametrize("spinning", [True, False])
def test_workers_spin_only_inside_a_forward_and_only_when_asked(tiny_bundle: Path, spinning: bool) -> None:
    # the setting reaches every session the runner opens (plain, mixed, device sampler), and
    # spinning always stops when a forward returns: between steps the cores are the engine's
    runner = OnnxRunner(tiny_bundle, variant="int8", provider="cpu", spinning=spinning, device_sampling="on")
    sessions = [runner.session, runner.mixed_session, runner.sampler]
    assert all(s is not None for s in sessions)
    for session in sessions:
        options = session.get_session_options()  # type: ignore[union-attr]
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == str(int(spinning))
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_auto_threads_run_a_small_cpu_model_on_one_thread_in_every_session(tiny_bundle: Path, variant: str) -> None:
    runner = OnnxRunner(tiny_bundle, variant=variant, provider="cpu", intra_op_threads="auto", device_sampling="on")
    sessions = [runner.session, runner.mixed_session, runner.sampler]
    assert runner.intra_op_threads == 1 and all(s is not None for s in sessions)
    assert {s.get_session_options().intra_op_num_threads for s in sessions} == {1}  # type: ignore[union-attr]
    explicit = OnnxRunner(tiny_bundle, variant=variant, provider="cpu", intra_op_threads=2, mixed_prefill=False)
    assert explicit.session.get_session_options().intra_op_num_threads == 2


def pool_for_this_process() -> int:
    """What `auto` gives a large model here: 0 (ORT's default, a thread per core) where this
    process may use the whole host, else the CPUs it may use (a CI runner with a CPU limit)."""
    cpus = available_cpus()
    return 0 if cpus >= (os.cpu_count() or cpus) else cpus


def test_auto_threads_leave_large_and_cuda_models_to_ort(tmp_path: Path) -> None:
    small, large = tmp_path / "small.onnx", tmp_path / "large.onnx"
    for path, size in ((small, SINGLE_THREAD_BELOW_BYTES - 1), (large, SINGLE_THREAD_BELOW_BYTES)):
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: the rule reads the size only
    assert choose_intra_op_threads("auto", small, CPU) == 1
    assert choose_intra_op_threads("auto", large, CPU) == pool_for_this_process()
    assert choose_intra_op_threads("auto", small, CUDA) == pool_for_this_process()  # the GPU runs the operators
    assert choose_intra_op_threads(3, small, CPU) == 3 and choose_intra_op_threads(0, small, CPU) == 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2, reason="needs 2 CPUs")
def test_auto_threads_give_a_large_model_only_the_cpus_the_process_may_use(tmp_path: Path) -> None:
    # ORT's default pool is one thread per core of the host; a process pinned to fewer CPUs
    # (as a container's cpuset or CPU limit pins it) must get that many, not the host's count
    large = tmp_path / "large.onnx"
    with open(large, "wb") as f:
        f.truncate(SINGLE_THREAD_BELOW_BYTES)
    script = (
        "import os, sys; from pathlib import Path; from runtime.onnx_runner import CPU, choose_intra_op_threads as c; "
        "print(c('auto', Path(sys.argv[1]), CPU)); os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "print(c('auto', Path(sys.argv[1]), CPU))"
    )
    result = subprocess.run([sys.executable, "-c", script, str(large)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    unpinned, pinned = result.stdout.split()
    assert pinned == "1" and int(unpinned) == pool_for_this_process()


def write_cgroup(root: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup file system as the kernel lays it out, under `root`, and a /proc/self/cgroup."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "fs", root / "proc_self_cgroup"


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        # cgroup v2, the pod's own path (Kubernetes limits.cpu: 1500m)
        ({"proc_self_cgroup": "0::/kubepods/pod1/c1\n", "fs/kubepods/pod1/c1/cpu.max": "150000 100000\n"}, 1.5),
        # v2 inside a cgroup namespace: the path is "/" and the root is the container's cgroup
        ({"proc_self_cgroup": "0::/\n", "fs/cpu.max": "50000 100000\n"}, 0.5),
        ({"proc_self_cgroup": "0::/\n", "fs/cpu.max": "max 100000\n"}, None),  # no limit
        # cgroup v1, cpu and cpuacct mounted together (docker --cpus 2)
        (
            {
                "proc_self_cgroup": "5:memory:/docker/a\n4:cpu,cpuacct:/docker/a\n",
                "fs/cpu,cpuacct/docker/a/cpu.cfs_quota_us": "200000\n",
                "fs/cpu,cpuacct/docker/a/cpu.cfs_period_us": "100000\n",
            },
            2.0,
        ),
        (
            {
                "proc_self_cgroup": "4:cpu,cpuacct:/\n",
                "fs/cpu/cpu.cfs_quota_us": "-1\n",
                "fs/cpu/cpu.cfs_period_us": "100000\n",
            },
            None,
        ),
        ({"proc_self_cgroup": "0::/\n", "fs/cpu.max": "garbage\n"}, None),
        ({"proc_self_cgroup": "0::/x\n"}, None),  # no cpu controller files at all
        ({"proc_self_cgroup": "garbage\n0::/\n", "fs/cpu.max": "100000 100000\n"}, 1.0),  # a stray line is skipped
    ],
)
def test_the_cgroup_cpu_quota_is_read_as_the_kernel_writes_it(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    root, proc = write_cgroup(tmp_path, files)
    assert cgroup_cpu_quota(root, proc) == quota
    if quota is not None:  # the CPUs to use: the quota rounded up, never more than the affinity, at least 1
        expected = max(1, min(len(os.sched_getaffinity(0)), math.ceil(quota)))
        assert available_cpus(root, proc) == expected


def test_the_server_threads_automatically_by_default_and_refuses_a_negative_count() -> None:
    from server.config import Settings

    assert Settings.model_fields["intra_op_threads"].default == "auto"
    command = [sys.executable, "-m", "server", "serve", "--intra-op-threads", "-1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    expected = "server: invalid setting: intra_op_threads: Input should be greater than or equal to 0"
    assert result.stderr.strip() == expected


def test_the_server_spins_by_default() -> None:
    from server.config import Settings

    assert Settings.model_fields["ort_spinning"].default is True  # the environment can still say false


def test_kept_io_bindings_change_no_logit_and_hold_only_the_current_cache(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In place, a session keeps its IO binding while the cache is the same tensors (runner._binding)."""
    runner = OnnxRunner(tiny_bundle, variant="int8", provider="cpu", intra_op_threads=1)
    assert runner.in_place
    made = []
    io_binding = runner.session.io_binding
    monkeypatch.setattr(runner.session, "io_binding", lambda: made.append(1) or io_binding())
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    kept = generate(runner, prompts, 8, eos_id=None, keep_logits=True)
    assert kept.logits is not None and len(made) < 8  # 8 forwards, the cache rebound only when it changed

    binding = runner._binding

    def fresh(*args: object) -> object:
        runner._bindings.clear()  # every forward binds anew, as before bindings were kept
        return binding(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "_binding", fresh)
    again = generate(runner, prompts, 8, eos_id=None, keep_logits=True)
    np.testing.assert_array_equal(kept.logits, again.logits)
    monkeypatch.setattr(runner, "_binding", binding)
    # A step that prefills a joiner runs the mixed session, whose binding then holds the batch's
    # cache too; the next batch's first forward must let go of both.
    ids, mask, positions = pad(prompts, runner.eos_token_id, right=True)
    _, past = runner.forward(ids, mask, positions, runner.empty_past(2))
    cache = BatchCache(past, mask, True)
    live = np.ones(2, bool)
    joiner = Prompts(*pad([[4, 5, 6]], runner.eos_token_id, right=True), runner.empty_past(1))
    runner.forward(np.full((2, 1), 5), cache.step_mask(live), cache.positions(), cache.past, joiner)
    old = [tensor for _, bound in runner._bindings.values() for tensor in bound]
    assert len(runner._bindings) == 2 and all(any(t is p for p in past) for t in old)
    ids, mask, positions = pad([[4, 5]], runner.eos_token_id, right=True)
    runner.forward(ids, mask, positions, runner.empty_past(1))  # another batch, another cache
    held = [tensor for _, bound in runner._bindings.values() for tensor in bound]
    assert held and not any(a is b for a in held for b in old)  # the old cache is not kept alive
