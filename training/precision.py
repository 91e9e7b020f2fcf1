"""Which arithmetic a forward runs in: bf16 autocast where the hardware has it.

CPUs with AVX512-BF16 or AMX run bf16 matrix products natively; elsewhere bf16 on the CPU
is emulated and slower than fp32. GPUs with bf16 (Ampere on) take it without loss
scaling; older ones take fp16 with a GradScaler.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

FP32, BF16, AUTO = "fp32", "bf16", "auto"
PRECISIONS = (AUTO, FP32, BF16)


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without these probes: stay in fp32
        return False


def autocast_for(
    device: torch.device, precision: str = AUTO, cpu_bf16_wins: bool = False
) -> tuple[Any, torch.amp.GradScaler | None]:
    """The autocast context (and loss scaler, for fp16) of a training step.

    `auto`: bf16 (or fp16 with scaling) on a GPU; on a CPU bf16 only when the CPU has it
    natively and the caller knows it wins (`cpu_bf16_wins`), otherwise fp32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == FP32:
        return nullcontext(), None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16), None
        if precision == BF16:
            raise ValueError("--precision bf16: this GPU has no bf16; use auto (fp16 with loss scaling)")
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    if precision == BF16 or (cpu_bf16_wins and cpu_has_bf16()):
        return torch.autocast("cpu", dtype=torch.bfloat16), None
    return nullcontext(), None
