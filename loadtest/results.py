"""bench/RESULTS.md from the bench's figures (loadtest/bench.py): tables, ratios, roofline, PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.plot import plot_sweep

# the systems of loadtest/bench.py, in the order the tables list them
SYSTEM_KEYS = ("naive", "ct2", "ours_off", "ours_int8", "ours_fp32")


def ratio(x: float | None, y: float | None, digits: int = 1) -> str:
    return f"{x / y:.{digits}f}x" if x and y else "-"


def ms(value: float | None) -> str:
    return f"{value:,.1f}" if value is not None and value == value else "-"  # NaN: no sample


def threads_text(threads: int) -> str:
    return f"{threads} thread" + ("s" if threads > 1 else "")


def static_tokens_per_s(value: float | dict[str, Any]) -> float:
    """A CTranslate2 static-batch figure: tokens/s (results from before the thread count was
    chosen per batch hold the number alone)."""
    return float(value) if isinstance(value, int | float) else float(value["tokens_per_s"])


def label(system: dict[str, Any]) -> str:
    """A system's name in the tables, with the thread count a peer was measured at."""
    threads = system.get("threads")
    return system["label"] if threads is None else f"{system['label']} ({threads_text(threads)})"


def at_half(figures: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in figures["open"] if r["fraction"] == 0.5), None)


def floors_ms(parameters: int, batch: int, roof: dict[str, Any]) -> tuple[float, float, str]:
    """(bandwidth, compute) floors of one decode step with INT8 weights, and which GEMM peak the
    second rests on: every weight read once (1 byte each) at the measured read bandwidth of all
    cores (one thread's copy bandwidth in results from before it was measured), and
    2 operations per weight and row at the measured INT8 GEMM peak (ONNX Runtime's
    MatMulInteger), or at the fp32 one where the INT8 peak was not measured (older results, or
    no `onnx` installed), which overstates the INT8 compute floor."""
    memory = parameters / ((roof.get("read_bandwidth_gbs") or roof["memory_bandwidth_gbs"]) * 1e9)
    if roof.get("ort_int8_gemm_gops"):
        return 1000 * memory, 1000 * 2 * parameters * batch / (roof["ort_int8_gemm_gops"] * 1e9), "INT8"
    return 1000 * memory, 1000 * 2 * parameters * batch / (roof["numpy_fp32_gemm_gflops"] * 1e9), "fp32"


def model_section(name: str, entry: dict[str, Any], roof: dict[str, Any]) -> list[str]:
    systems = {k: entry["systems"][k] for k in SYSTEM_KEYS if k in entry["systems"]}
    sat = {k: s["saturation"]["tokens_per_s"] for k, s in systems.items()}
    lines = [
        f"## {name} ({entry['parameters'] / 1e6:.1f}M parameters)",
        "",
        "| system | saturation tok/s (req/s, clients) | p50 / p99 ms at 50% of saturation | unloaded p50 ms"
        " | unloaded TTFT p50 ms (streamed p50) | vs naive | vs CTranslate2 (HTTP) | load avg before / after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, system in systems.items():
        saturation, unloaded, half = system["saturation"], system["unloaded"], at_half(system)
        streamed = system.get("unloaded_stream", unloaded)  # older results: one streamed run
        ttft = streamed.get("ttft_ms")
        ttft_text = f"{ms(ttft['p50'])} ({ms(streamed['latency_ms']['p50'])})" if ttft else "no streaming"
        lines.append(
            f"| {label(system)} | {saturation['tokens_per_s']:,.0f} ({saturation['requests_per_s']:.2f},"
            f" {system['concurrency']}) | {ms(half['latency_ms']['p50']) if half else '-'} /"
            f" {ms(half['latency_ms']['p99']) if half else '-'} | {ms(unloaded['latency_ms']['p50'])}"
            f" | {ttft_text} | {ratio(sat[key], sat.get('naive'))}"
            f" | {ratio(sat[key], sat.get('ct2'))} | {system['load_before'][0]:.2f} / {system['load_after'][0]:.2f} |"
        )
    lines += ["", "Open-loop Poisson loads at fractions of each system's saturation (after warm-up):", ""]
    lines += ["| system | offered req/s | achieved req/s | requests | p50 | p90 | p99 | p99.9 ms | errors |"]
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for system in systems.values():
        for r in system["open"]:
            lat = r["latency_ms"]
            lines.append(
                f"| {label(system)} | {r['rate']:.2f} ({r['fraction']:.0%}) | {r['requests_per_s']:.2f}"
                f" | {r['requests']} | {ms(lat['p50'])} | {ms(lat['p90'])} | {ms(lat['p99'])} | {ms(lat['p99.9'])}"
                f" | {sum(r['errors'].values())} |"
            )
    static = entry.get("ct2_static") or {}
    if static:
        tuned = all(isinstance(v, dict) for v in static.values())  # older results: one thread per core only
        how = "at the faster of one thread and one per core" if tuned else "at one thread per core"
        lines += ["", f"CTranslate2 INT8 in-process (no HTTP), static batches, generated tokens/s {how}: "
                  + ", ".join(f"batch {b}: {static_tokens_per_s(v):,.0f}"
                              + (f" ({threads_text(v['threads'])})" if isinstance(v, dict) else "")
                              for b, v in static.items()) + "."]  # fmt: skip
        same = static_tokens_per_s(static["32"]) if "32" in static else None
        if same and "ours_int8" in sat:
            lines.append(f"Ours INT8 over HTTP at 32 clients against it at batch 32: {ratio(sat['ours_int8'], same)}.")
    if "ours_int8" in systems:
        unloaded = systems["ours_int8"]["unloaded"]
        per_token = 1000 / unloaded["tokens_per_s"] if unloaded["tokens_per_s"] else None
        memory, _, _ = floors_ms(entry["parameters"], 1, roof)
        step32 = 32 / sat["ours_int8"] * 1000 if sat["ours_int8"] else None
        memory32, compute32, peak = floors_ms(entry["parameters"], 32, roof)
        roofline32 = max(memory32, compute32)
        lines += [
            "",
            f"Roofline, INT8 weights ({entry['parameters'] / 1e6:.0f} MB): the weight-bandwidth floor of a decode"
            f" step is {memory:.2f} ms; ours unloaded spends {ms(per_token)} ms per token (prefill and HTTP"
            f" included), {ratio(per_token, memory, 2)} that floor. At batch 32 the {peak}-GEMM compute floor is"
            f" {compute32:.2f} ms, so the roofline of a step (the larger floor) is {roofline32:.2f} ms; ours at"
            f" saturation spends {ms(step32)} ms per 32 tokens (prefills, sampling and HTTP included):"
            f" {100 * roofline32 / step32 if step32 else 0:.1f}% of the roofline.",
        ]
        alone = entry.get("inprocess")
        if alone:
            lines.append(
                f"Without HTTP (one request at a time through the engine's scheduler in a process of its own,"
                f" `python bench/scheduler.py unloaded BUNDLE`), a decode step takes {alone['step_ms']:.2f} ms,"
                f" {alone['step_ms'] / memory:.2f}x the floor; ORT's forward in it {alone['forward_ms']:.2f} ms,"
                f" {alone['forward_ms'] / memory:.2f}x. The rest of the time per token above is the engine's"
                " host work, the prefill and HTTP."
            )
        half = at_half(systems["ours_int8"])
        if half:
            p99, p50 = half["latency_ms"]["p99"], unloaded["latency_ms"]["p50"]
            lines.append(
                f"Tail: at 50% of saturation ours INT8's p99 is {ms(p99)} ms, {ratio(p99, p50, 2)} its unloaded p50"
                f" ({ms(p50)} ms)."
            )
    lines += ["", f"![latency against offered load, {name}](RESULTS_{name}.png)", ""]
    return lines


def write_results(results: dict[str, Any], out: Path) -> None:
    roof = results["roofline"]
    opens = [r for m in results["models"].values() for s in m["systems"].values() for r in s["open"]]
    fractions = "/".join(f"{f:.0%}" for f in sorted({r["fraction"] for r in opens}))
    title = "# Serving benchmark" + (" (QUICK MODE: a smoke test, not a measurement)" if results["quick"] else "")
    lines = [
        title,
        "",
        f"Regenerated by `{results['command']}` (or `make bench`) on {results['started']}"
        f" in {results['minutes']} minutes."
        f" Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, {results['machine']['platform']}."
        f" Load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in results['load_at_start'])},"
        f" at end {'/'.join(f'{x:.2f}' for x in results['load_at_end'])}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        f"Roofline measured by the command: fp32 GEMM {roof['numpy_fp32_gemm_gflops']:,.0f} GFLOP/s (numpy,"
        f" n={roof['gemm_n']}), {roof['torch_fp32_gemm_gflops'] or 0:,.0f} GFLOP/s (torch); INT8 GEMM"
        f" {roof.get('ort_int8_gemm_gops') or 0:,.0f} GOP/s (ONNX Runtime MatMulInteger, weights prepacked);"
        f" memory read bandwidth {roof.get('read_bandwidth_gbs') or 0:.1f} GB/s ({roof.get('cores') or '?'} cores"
        f" together, {roof['copy_mb']} MB), copy bandwidth {roof['memory_bandwidth_gbs']:.1f} GB/s (one thread,"
        " read + write). The weight-bandwidth floor rests on the read bandwidth.",
        "",
        "How: one server at a time owns the cores (ours: its HTTP process and its engine process, the"
        " default), the load generator (`loadtest`) runs beside it on"
        " the same cores (so every HTTP figure pays for its client too). Every request is the same 20-word"
        " `t2i_prompt` with a 48-token budget and temperature 0.8, the eight default intents in turn. Unloaded:"
        " one request at a time, answered whole as every system answers (the p50 the tail ratio divides by), and"
        " where the server streams, a second such run streamed (TTFT). Saturation: closed loop at the"
        f" listed number of clients, warm-up excluded. Then open-loop Poisson arrivals at {fractions} of that"
        " saturation. The baselines serve one request at a time (a lock around one generate() call) and do"
        " not stream; each runs at the thread count, one or one per core, that served it the most tokens/s in a"
        " closed loop the command runs first (the count is in its row); ours at its own default"
        " (`intra_op_threads=auto`). Tokens/s counts generated tokens, EOS included. A phase's percentiles rest on the"
        " `requests` column: with few requests (the slow baselines on GPT-2 small) p99 and p99.9 are the"
        " maximum, so read them as rough.",
        "",
    ]
    for name, entry in results["models"].items():
        lines += model_section(name, entry, roof)
        series = {label(entry["systems"][k]): entry["systems"][k]["open"] for k in SYSTEM_KEYS
                  if k in entry["systems"]}  # fmt: skip
        plot_sweep(series, out.parent / f"RESULTS_{name}.png", f"{name}: latency against offered load", ("p50", "p99"))
    lines += ["Server command lines (each with `--port P` added):", ""]
    for name, entry in results["models"].items():
        lines += [f"- {name} {key}: `{s['command']}`" for key, s in entry["systems"].items()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
