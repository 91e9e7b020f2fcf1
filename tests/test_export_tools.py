"""The benchmark and the GPU check scripts, run small on the CPU so they are known to work."""

from __future__ import annotations

from pathlib import Path

from export.__main__ import main as export_main


def test_gpu_check_dry_run_on_cpu_checks_parity_with_io_binding(tiny_bundle: Path, tmp_path: Path) -> None:
    """The same script as on the GPU, with the KV cache bound as OrtValues on the CPU device."""
    out = tmp_path / "gpu_check.md"
    args = ["gpu-check", "--bundle", str(tiny_bundle), "--device", "cpu", "--batches", "1,3", "--steps", "3"]
    assert export_main([*args, "--out", str(out)]) == 0
    report = out.read_text()
    assert "fp16 (cpu): fixed:" in report and "-> PASS" in report
    rows = [line for line in report.splitlines() if line.startswith(("| 1 |", "| 3 |"))]
    assert len(rows) == 2 and all(float(row.split("|")[3]) > 0 for row in rows)


def test_bench_writes_a_table_per_variant(tiny_checkpoint: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.md"
    source = ["--checkpoint", str(tiny_checkpoint), "--bundle", str(tiny_bundle)]
    assert export_main(["bench", *source, "--batches", "1,2", "--steps", "2", "--repeats", "1", "--out", str(out)]) == 0
    report = out.read_text()
    assert "| batch | floor fp32 mem / compute | torch eager fp32 | ORT fp32 | ORT int8 |" in report
    assert "python -m export bench" in report
    decode_rows = [line for line in report.splitlines() if line.startswith("| 2 | ") and "/" in line]
    assert len(decode_rows) == 1 and decode_rows[0].count("(") == 4  # torch + three variants, each with tokens/s


def test_torch_gpu_check_dry_run_on_cpu_checks_fp16_parity_and_times_the_device_loop(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The PyTorch GPU check (for GPU hosts without onnxruntime-gpu), with FP16 on the CPU."""
    out = tmp_path / "torch_gpu_check.md"
    args = ["torch-gpu-check", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--batches", "1,3"]
    assert export_main([*args, "--steps", "3", "--out", str(out)]) == 0
    report = out.read_text()
    assert "fp16 (cpu): fixed:" in report and "-> PASS" in report
    rows = [line.split("|") for line in report.splitlines() if line.startswith(("| 1 |", "| 3 |"))]
    assert len(rows) == 2 and all(float(row[3]) > 0 and float(row[5]) > 0 for row in rows)
