"""`OnnxRunner`: one exported decoder variant in an ONNX Runtime session.

It implements the runner contract (runtime/runner.py, docs/architecture.md): `forward(input_ids,
attention_mask, position_ids, past)` with numpy ids in and numpy logits out, so evaluation,
export verification, the export bench and the server drive PyTorch and ONNX through the same
decode loop (runtime/decode.py). `past` and `present` are ORT values that stay on the execution
device between steps (IO binding), so a decode step copies nothing but ids, masks and logits
across the host/device boundary. `step_and_sample()` also keeps the logits there and samples in
a small ONNX graph (sampler_graph.py), so only the token ids come back (the default on CUDA).

The KV cache, in place or not, is the variant's `kv_cache` (contract/manifest.py):
- `in_place` (GPT-2 exported by format 3): each past tensor is a preallocated buffer with
  room for more columns than the batch holds; the graph's attention kernel (ONNX Runtime's
  GroupQueryAttention) writes the step's new key/value column into it, and present is bound to
  the same buffer, so a decode step copies no cache at all. When a step would outgrow the buffer,
  `_with_room` moves the cache into a larger one (one copy every KV_ROOM steps at most).
- `ragged` (GPT-2 exported by this version): `in_place`, and the graph takes each row's length
  from its attention mask, so the batch's rows can start at column 0 with lengths of their own
  (`ragged_rows`: on CPU, where the cache is host memory; kv_cache.py).
  A variant may also have a mixed graph (contract/manifest.py, `mixed_file`): with
  `mixed_prefill` the runner loads it as a second session on the same weights, and a forward
  given `Prompts` runs it, prefilling them in the batch's step (server/engine/scheduler.py).
- `concat` (older bundles): the graph returns present = concat(past,
  new), a new [B, n_kv_head, P+1, head_dim] buffer per layer every step; present is bound
  straight back as the next past (no numpy round trip), from ORT's recycling memory arena.
Either way the batch is only rebuilt when its membership changes (see kv_cache.py), and the
cache's live columns are always the first `columns` (kv_cache.BatchCache) of each buffer.

One thread runs a runner's forwards (the server's engine thread; evaluation's loop): in place,
a session keeps one IO binding from step to step (`_binding`), which two threads must not share.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnxruntime as ort

from contract.manifest import (
    ATTENTION_MASK,
    INPUT_IDS,
    KV_CACHE_KINDS,
    KV_IN_PLACE,
    KV_RAGGED,
    LOGITS,
    POSITION_IDS,
    PROMPT_INPUTS,
    BundleError,
    Manifest,
    load_manifest,
    past_names,
    present_names,
    prompt_past_names,
    prompt_present_names,
)
from runtime import attention_kernel as attention_rewrite
from runtime import matmul_kernel as matmul_rewrite
from runtime.cache_graph import CACHE_OUTPUT, cache_graph
from runtime.cpus import available_cpus
from runtime.custom_ops import SharedWeights, kernel_session, matmul_on_amx
from runtime.custom_ops import library as custom_ops_library
from runtime.sampler_graph import SAMPLER_OUTPUT, sampler_graph

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

KV_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}  # int8: export/kv_int8.py
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Spare columns an in-place KV buffer is given beyond what it holds: it grows (one copy of the
# cache) at most once every KV_ROOM steps, and the room costs memory only (the kernel reads
# the live columns alone).
KV_ROOM = 64
# A CPU decoder smaller than this runs its operators on one thread when the server asks for
# `auto` intra-op threads. Its operators are too short to gain from a second thread, which spins
# through every forward on the core that the rest of the server needs (its HTTP side, the
# engine's sampling and bookkeeping). The tiny default (13 MB INT8, 27 MB FP32) serves
# 24-28% more tokens/s on one thread on 2 cores. GPT-2 small (116 MB INT8) loses 12% there,
# and one request alone takes 60% longer (bench/engine.md, step 17).
SINGLE_THREAD_BELOW_BYTES = 64 * 2**20


@dataclass
class Prompts:
    """Prompts prefilled in the same forward as the batch's step (a `mixed` graph): [J, S'] ids,
    mask and positions, right-padded, and their own cache buffers (`OnnxRunner.empty_past(J)`),
    which the graph fills in place. The runner swaps in larger ones first if S' outgrows them."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    position_ids: np.ndarray
    past: list[ort.OrtValue]


def choose_provider(requested: str) -> str:
    """`auto` takes CUDA when this onnxruntime build has it (onnxruntime-gpu), else CPU."""
    available = ort.get_available_providers()
    if requested == "cuda":
        if CUDA not in available:
            raise BundleError(f"provider cuda was asked for but this onnxruntime offers only {available}")
        return CUDA
    if requested == "auto" and CUDA in available:
        return CUDA
    return CPU


def choose_intra_op_threads(requested: int | Literal["auto"], decoder: Path, provider: str) -> int:
    """ORT's threads inside one operator; a number is kept. `auto`: 1 for a CPU decoder file
    under SINGLE_THREAD_BELOW_BYTES; else ORT's default (0: one per physical core of the host),
    unless this process may use fewer CPUs than the host has (a container's CPU limit, an
    affinity mask: cpus.py), then that many."""
    if requested != "auto":
        return requested
    if provider == CPU and decoder.stat().st_size < SINGLE_THREAD_BELOW_BYTES:
        return 1
    cpus = available_cpus()
    return cpus if cpus < (os.cpu_count() or cpus) else 0


def choose_variant(manifest: Manifest, requested: str, provider: str) -> str:
    """`auto`: FP16 on CUDA (half the bytes, tensor cores), INT8 on CPU (4x fewer weight
    bytes: CPU decoding is weight-bandwidth bound), FP32 when the preferred one is absent."""
    names = [v.name for v in manifest.variants]
    if requested != "auto":
        manifest.variant(requested)  # raises with the list of names when absent
        return requested
    preferred = ["fp16", "fp32"] if provider == CUDA else ["int8", "fp32"]
    for name in preferred:
        if name in names:
            return name
    return names[0]


class _Memory:
    """Host memory numpy can wrap without a copy (`np.asarray`), as C-contiguous `shape` of `typestr`."""

    __slots__ = ("__array_interface__",)

    def __init__(self, address: int, shape: tuple[int, ...], typestr: str) -> None:
        self.__array_interface__ = {"data": (address, False), "shape": shape, "typestr": typestr, "version": 3}


def _same(bound: list[ort.OrtValue], past: list[ort.OrtValue]) -> bool:
    """Whether two caches are the same tensors (not equal values: the same buffers)."""
    return len(bound) == len(past) and all(a is b for a, b in zip(bound, past, strict=True))


class OnnxRunner:
    def __init__(
        self,
        bundle_dir: Path | str,
        variant: str = "auto",
        provider: str = "auto",
        intra_op_threads: int | Literal["auto"] = 0,
        inter_op_threads: int = 0,
        manifest: Manifest | None = None,
        device_sampling: str = "auto",
        spinning: bool = True,
        device_cache: bool | None = None,
        profile_prefix: str | None = None,
        mixed_prefill: bool = True,
        attention_kernel: Literal["auto", "on", "off"] = "auto",
        matmul_kernel: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest if manifest is not None else load_manifest(self.bundle_dir)
        provider_name = choose_provider(provider)
        self.variant = self.manifest.variant(choose_variant(self.manifest, variant, provider_name))

        model = self.manifest.model
        self.n_layer = model.n_layer
        self.n_kv_head = model.n_kv_head  # key/value heads: fewer than query heads under grouped-query attention
        self.head_dim = model.head_dim
        self.vocab_size = model.vocab_size
        self.n_positions = model.n_positions
        self.eos_token_id = model.eos_token_id
        if self.variant.kv_dtype not in KV_DTYPES:
            known = list(KV_DTYPES)
            raise BundleError(f"variant {self.variant.name} has kv_dtype {self.variant.kv_dtype!r}; known: {known}")
        self.kv_dtype = np.dtype(KV_DTYPES[self.variant.kv_dtype])
        if self.variant.kv_cache not in KV_CACHE_KINDS:
            kind, known = self.variant.kv_cache, list(KV_CACHE_KINDS)
            raise BundleError(f"variant {self.variant.name} has kv_cache {kind!r}; this runtime knows {known}")
        self.in_place = self.variant.kv_cache in (KV_IN_PLACE, KV_RAGGED)
        self.past_names = past_names(self.n_layer)
        self.present_names = present_names(self.n_layer)
        self.prompt_cache_names = (prompt_past_names(self.n_layer), prompt_present_names(self.n_layer))

        path = self.bundle_dir / self.variant.file
        self.intra_op_threads = choose_intra_op_threads(intra_op_threads, path, provider_name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning: a worker that finished its part of one operator busy-waits for the next
        # instead of sleeping, so the ~100 operators of a step do not each pay a futex wake-up.
        # force_spinning_stop ends the spin when the forward returns: between steps the engine
        # runs Python (sampling, HTTP) that a spinning worker would take a core from.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if profile_prefix is not None:  # ORT's per-operator profile (export/engine_bench.py --ort-profile)
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        providers: list[str | tuple[str, dict[str, str]]] = [CPU]
        if provider_name == CUDA:
            providers = [(CUDA, {"device_id": "0"}), CPU]
        # Our CPU kernels (custom_ops.py): int8 attention in place of GroupQueryAttention, the
        # INT8 weight MatMul on AMX in place of ORT's dynamic-quantization kernel.
        use = self._use_kernel
        self.attention_kernel = use("attention_kernel", attention_kernel, provider_name, self._attention_fits)
        self.matmul_kernel = use("matmul_kernel", matmul_kernel, provider_name, self._matmul_fits)
        if self.attention_kernel or self.matmul_kernel:
            options.register_custom_ops_library(str(custom_ops_library()))
        self.shared_weights = SharedWeights()  # the decode and mixed sessions' packed weights
        self.session = self._decoder_session(path, options, providers)
        for name, requested in (("attention_kernel", attention_kernel), ("matmul_kernel", matmul_kernel)):
            if requested == "on" and not getattr(self, name):
                raise BundleError(f"{name}=on, but no node of {path.name} is one it computes")
        self.last_run_s = 0.0  # the last decoder run's time inside ORT (the engine bench splits a step with it)
        self._check_interface(self.session, mixed=False)
        # fp32 logits on the host are written into the array `forward` returns, not copied out of
        # a tensor ORT allocated (a 32-row step's 0.9 MB; fp16 logits are cast on the way out).
        self._float_logits = self.session.get_outputs()[0].type == "tensor(float)"
        # ORT falls back to CPU silently when CUDA cannot start; report what it actually uses.
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider == CUDA else "cpu"
        # Sampling on the device: by default only where it saves a copy (CUDA); `on`
        # also runs it on CPU, which is how the path is tested without a GPU.
        self.sampler: ort.InferenceSession | None = None
        if device_sampling == "on" or (device_sampling == "auto" and self.device == "cuda"):
            self.sampler = ort.InferenceSession(sampler_graph(), options, providers=providers)
        # Rebuilding the batch cache (requests join/leave) on the device too; on CPU numpy
        # does it on zero-copy views instead (`device_cache=True` forces the graph, for tests).
        self.cache_surgery: ort.InferenceSession | None = None
        if device_cache or (device_cache is None and self.device == "cuda"):
            if self.kv_dtype == np.int8:  # the int8 variant's cache is a CPU layout (export/kv_int8.py)
                raise BundleError(f"variant {self.variant.name} keeps an int8 KV cache, served on CPU only")
            self.cache_surgery = ort.InferenceSession(cache_graph(self.variant.kv_dtype), options, providers=providers)
        # Rows of their own lengths (kv_cache.py): a ragged graph whose cache the host rebuilds.
        self.ragged_rows = self.variant.kv_cache == KV_RAGGED and self.cache_surgery is None and self.device == "cpu"
        # Joiners prefilled in the batch's forward (the variant's mixed graph, contract/manifest.py):
        # their cache joins the ragged rows as it comes (kv_cache.py). A second session on the same
        # weights, run only at steps that admit requests; the others keep the plain graph.
        self.mixed_session: ort.InferenceSession | None = None
        # id(session) -> its IO binding and the cache tensors bound in it, in place only (_binding)
        self._bindings: dict[int, tuple[ort.IOBinding, list[ort.OrtValue]]] = {}
        if mixed_prefill and self.variant.mixed_file and self.ragged_rows:
            mixed_path = self.bundle_dir / self.variant.mixed_file
            self.mixed_session = self._decoder_session(mixed_path, options, providers)
            self._check_interface(self.mixed_session, mixed=True)
        log.info(
            "runner ready",
            extra={
                "variant": self.variant.name,
                "provider": self.provider,
                "asked": provider,
                "device_sampling": self.sampler is not None,
                "device_cache": self.cache_surgery is not None,
                "kv_cache": self.variant.kv_cache,
                "kv_dtype": self.variant.kv_dtype,
                "ragged_rows": self.ragged_rows,
                "mixed_prefill": self.mixed_session is not None,
                "attention_kernel": self.attention_kernel,
                "matmul_kernel": self.matmul_kernel,
                "intra_op_threads": self.intra_op_threads or "ORT's default",
                "file": str(path),
            },
        )

    def _attention_fits(self, provider: str) -> str | None:
        """Why the int8 attention kernel cannot serve this runner (None: it can)."""
        if provider != CPU or self.kv_dtype != np.int8:
            variant = self.variant
            return f"it serves an int8 KV cache on CPU; variant {variant.name} keeps {variant.kv_dtype} on {provider}"
        return None

    def _matmul_fits(self, provider: str) -> str | None:
        """Why the INT8 MatMul kernel cannot serve this runner (None: it can). Float weights are
        ruled out here, from the manifest: looking for quantized MatMuls would parse the graphs."""
        if provider != CPU or self.variant.dtype != "int8":
            variant = self.variant
            return f"it serves INT8 weights on CPU; variant {variant.name} keeps {variant.dtype} on {provider}"
        return None

    def _use_kernel(self, name: str, requested: str, provider: str, fits: Callable[[str], str | None]) -> bool:
        """Whether this runner puts one of our kernels in its graphs: `auto` where it fits, the
        library was built and (the MatMul) the CPU has AMX; `on` where it fits and is built, else
        an error; `off` never."""
        if requested == "off":
            return False
        why_not = fits(provider)
        if why_not is not None:
            if requested == "on":
                raise BundleError(f"{name}=on, but {why_not}")
            return False
        built = custom_ops_library()
        if built is None:
            if requested == "on":
                raise BundleError(
                    f"{name}=on, but our kernels are not built: install with a C compiler "
                    "(pip install -e .) or run `python -m runtime.custom_ops --build`"
                )
            log.info("our CPU kernels are not built; ONNX Runtime's own serve", extra={"kernel": name})
            return False
        # The MatMul without AMX is portable C, slower than ORT's kernel: only when asked for.
        return name != "matmul_kernel" or requested == "on" or matmul_on_amx(built)

    def _decoder_session(
        self, path: Path, options: ort.SessionOptions, providers: list[str | tuple[str, dict[str, str]]]
    ) -> ort.InferenceSession:
        """A session of the graph at `path`, with our kernels in place where this runner uses
        them; a kernel that finds no node it computes in the graph is reported unused (e.g.
        attention with a custom scale or softcap: ORT's kernel serves it)."""
        packed: Callable[[onnx.ModelProto], int] = functools.partial(
            matmul_rewrite.with_kernel, shared=self.shared_weights.arrays
        )
        rewrites = {"attention_kernel": attention_rewrite.with_kernel, "matmul_kernel": packed}
        used = [name for name in rewrites if getattr(self, name)]
        if used:
            rewritten = [rewrites[name] for name in used]
            session, counts = kernel_session(path, options, providers, rewritten, self.shared_weights)
            for name, count in zip(used, counts, strict=True):
                setattr(self, name, bool(count))
            if session is not None:
                return session
        return ort.InferenceSession(str(path), options, providers=providers)

    def _check_interface(self, session: ort.InferenceSession, mixed: bool) -> None:
        expected_in = [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *self.past_names]
        expected_out = [LOGITS, *self.present_names]
        if mixed:
            expected_in += [*PROMPT_INPUTS, *self.prompt_cache_names[0]]
            expected_out += self.prompt_cache_names[1]
        actual_in = [i.name for i in session.get_inputs()]
        actual_out = [o.name for o in session.get_outputs()]
        if sorted(actual_in) != sorted(expected_in) or sorted(actual_out) != sorted(expected_out):
            file, kind = (self.variant.mixed_file, "mixed decoder") if mixed else (self.variant.file, "decoder")
            raise BundleError(f"{file} does not have the {kind} interface: inputs {actual_in}, outputs {actual_out}")

    @property
    def mixed_prefill(self) -> bool:
        """Whether a step can prefill joining prompts in the batch's forward (`Prompts`)."""
        return self.mixed_session is not None

    # --- the runner contract (runtime/runner.py) --------------------------------------

    def empty_past(self, batch: int) -> list[ort.OrtValue]:
        """The past of a prefill: 0 live columns per past name, on the device (in place: with room)."""
        shape = (batch, self.n_kv_head, 0, self.head_dim)
        return [self.to_device(np.zeros(shape, self.kv_dtype)) for _ in self.past_names]

    def to_device(self, array: np.ndarray, columns_needed: int = 0) -> ort.OrtValue:
        """A KV tensor for `forward()` holding `array` [B, n_kv_head, columns, head_dim] in its
        first columns. concat: exactly that; on CPU it shares the numpy memory (no copy).
        in_place: a buffer with KV_ROOM more columns (zeros) than it holds or than
        `columns_needed` (a prefill longer than KV_ROOM), for the graph to write into."""
        if self.in_place:  # copied once, straight from `array` (often a strided view) into the buffer
            columns = array.shape[2]
            buffer = self.kv_buffer(array.shape[0], max(columns, columns_needed))
            buffer[:, :, :columns] = array
            return self.wrap(buffer)
        return self.wrap(np.ascontiguousarray(array, dtype=self.kv_dtype))

    def kv_buffer(self, rows: int, columns: int) -> np.ndarray:
        """Zeros on the host [rows, n_kv_head, columns (+ KV_ROOM in place), head_dim], to fill
        and then `wrap`: a cache built in its final buffer is copied once."""
        room = max(columns, min(self.n_positions, columns + KV_ROOM)) if self.in_place else columns
        return np.zeros((rows, self.n_kv_head, room, self.head_dim), self.kv_dtype)

    def wrap(self, array: np.ndarray) -> ort.OrtValue:
        """A host array as a KV tensor on the runner's device (on CPU: the same memory)."""
        return ort.OrtValue.ortvalue_from_numpy(array, self.device, 0)

    def _with_room(self, past: list[ort.OrtValue], past_columns: int, total_columns: int) -> list[ort.OrtValue]:
        """in_place: buffers that can take `total_columns`; the same ones while they can."""
        if int(past[0].shape()[2]) >= total_columns:
            return past
        return [self.to_device(self.to_host(value)[:, :, :past_columns], total_columns) for value in past]

    def to_host(self, value: ort.OrtValue) -> np.ndarray:
        """A KV tensor on the host: a zero-copy view on CPU (see host_view), a copy from CUDA."""
        view = self.host_view(value)
        return view if view is not None else value.numpy()

    def host_view(self, value: ort.OrtValue) -> np.ndarray | None:
        """On CPU, a numpy array over the OrtValue's own memory: no copy, and writes land
        in the tensor ORT will read at the next step (that is how a joining request is
        written into a free row in place). The caller must keep `value` alive while it
        uses the view. None on CUDA, where the memory is not host-addressable."""
        if self.device != "cpu":
            return None
        shape = tuple(value.shape())
        if 0 in shape:
            return np.zeros(shape, self.kv_dtype)
        # numpy's array interface over the raw pointer: ~1 us, a quarter of a ctypes array type's
        view: np.ndarray = np.asarray(_Memory(value.data_ptr(), shape, self.kv_dtype.str))
        return view

    def rearrange(
        self,
        running: ort.OrtValue,
        keep: np.ndarray,
        running_pads: np.ndarray,
        joining: ort.OrtValue,
        join_rows: np.ndarray,
        joining_scale: np.ndarray,
        joining_pads: np.ndarray,
    ) -> ort.OrtValue:
        """One KV tensor of the next batch, built where the cache lives (cache_graph.py)."""
        assert self.cache_surgery is not None, "device cache surgery is off for this runner"
        binding = self.cache_surgery.io_binding()
        binding.bind_ortvalue_input("running", running)
        binding.bind_ortvalue_input("joining", joining)
        for name, value in (
            ("keep", keep),
            ("running_pads", running_pads),
            ("join_rows", join_rows),
            ("joining_scale", joining_scale.astype(self.kv_dtype)),
            ("joining_pads", joining_pads),
        ):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output(CACHE_OUTPUT, self.device)
        self.cache_surgery.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def _run_decoder(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[ort.OrtValue],
        logits_device: str,
        prompts: Prompts | None,
        logits_into: np.ndarray | None = None,
    ) -> tuple[ort.OrtValue, list[ort.OrtValue]]:
        """One forward; `logits_into`: a float32 host array [B (+ J), vocab] the logits are written
        into, in place of a tensor ORT allocates (whose return is then not meaningful)."""
        if self.in_place:
            past = self._with_room(past, attention_mask.shape[1] - input_ids.shape[1], attention_mask.shape[1])
        session = self.session
        if prompts is not None:
            if self.mixed_session is None:
                raise ValueError(f"variant {self.variant.name} has no mixed graph to prefill prompts in a step")
            session = self.mixed_session
        binding = self._binding(session, past)
        if logits_into is not None:
            binding.bind_output(LOGITS, "cpu", 0, np.float32, list(logits_into.shape), logits_into.ctypes.data)
        else:
            binding.bind_output(LOGITS, logits_device)  # a rebound name keeps its place; ORT allocates anew
        self._bind_ids(binding, (INPUT_IDS, ATTENTION_MASK, POSITION_IDS), input_ids, attention_mask, position_ids)
        if prompts is not None:
            self._bind_ids(binding, PROMPT_INPUTS, prompts.input_ids, prompts.attention_mask, prompts.position_ids)
            prompts.past = self._with_room(prompts.past, 0, prompts.input_ids.shape[1])
            self._bind_cache(binding, *self.prompt_cache_names, prompts.past)
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        self.last_run_s = time.perf_counter() - start
        if self.in_place:  # the presents are `past`, written in place: wrap only the logits
            return ort.OrtValue(binding.get_outputs_as_ortvaluevector()[0]), past
        outputs = binding.get_outputs()
        return outputs[0], list(outputs[1:])

    def _binding(self, session: ort.InferenceSession, past: list[ort.OrtValue]) -> ort.IOBinding:
        """An IO binding of `session` with `past` bound as its cache and the logits output bound
        (first: outputs come back in the order bound; the caller binds it again for its run). In
        place, the cache's tensors are the same from step to step until a rebuild, so each session
        keeps its binding and binds the cache again only when it changed: ~50 bind calls a step
        fewer for GPT-2 small (0.1 ms of a 3.5 ms batch-1 step, bench/engine.md). A kept binding
        whose cache is no longer the batch's is dropped, so no old cache stays alive in it."""
        kept = self._bindings.get(id(session))
        if kept is not None and _same(kept[1], past):
            return kept[0]
        binding = session.io_binding()
        binding.bind_output(LOGITS, self.device)
        self._bind_cache(binding, self.past_names, self.present_names, past)
        if self.in_place:  # a new cache: a binding of another session holding the old one goes
            self._bindings = {key: b for key, b in self._bindings.items() if _same(b[1], past)}
            self._bindings[id(session)] = (binding, list(past))  # a copy: the caller may change its list
        return binding

    def _bind_ids(self, binding: ort.IOBinding, names: tuple[str, ...], *arrays: np.ndarray) -> None:
        for name, array in zip(names, arrays, strict=True):
            binding.bind_cpu_input(name, np.ascontiguousarray(array, dtype=np.int64))

    def _bind_cache(
        self, binding: ort.IOBinding, past: list[str], present: list[str], values: list[ort.OrtValue]
    ) -> None:
        for name, value in zip(past, values, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(present, values, strict=True):
            if self.in_place:
                binding.bind_ortvalue_output(name, value)  # the same buffer: the kernel writes in place
            else:
                binding.bind_output(name, self.device)

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[ort.OrtValue],
        prompts: Prompts | None = None,
    ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """One forward with IO binding: ids, mask and positions go in from host memory
        (tiny), past is bound where it lives, present is left on the device for the next
        step, and the last-position logits [B, vocab] come back to the host, where the
        per-request samplers run. With `prompts` (a `mixed` graph), the logits are [B + J, vocab]
        and the prompts' cache is in `prompts.past`."""
        if self.device == "cpu" and self._float_logits:  # written straight into the array we return
            rows = input_ids.shape[0] + (0 if prompts is None else prompts.input_ids.shape[0])
            logits = np.empty((rows, self.vocab_size), np.float32)
            _, present = self._run_decoder(input_ids, attention_mask, position_ids, past, "cpu", prompts, logits)
            return logits, present
        value, present = self._run_decoder(input_ids, attention_mask, position_ids, past, "cpu", prompts)
        return value.numpy().astype(np.float32, copy=False), present

    def step_and_sample(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[ort.OrtValue],
        sampling: dict[str, np.ndarray | ort.OrtValue],
        prompts: Prompts | None = None,
    ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """A forward whose logits stay on the device and go straight into the sampler
        graph; only the token ids [B] are copied back. `sampling` holds the sampler's
        per-row inputs (runtime/sampler.py: device_inputs)."""
        assert self.sampler is not None, "device sampling is off for this runner"
        logits, present = self._run_decoder(input_ids, attention_mask, position_ids, past, self.device, prompts)
        binding = self.sampler.io_binding()
        binding.bind_ortvalue_input("all_logits", logits)
        for name, value in sampling.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)  # constant per run, already on the device
            else:
                binding.bind_cpu_input(name, value)
        binding.bind_output(SAMPLER_OUTPUT, "cpu")
        self.sampler.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy(), present
