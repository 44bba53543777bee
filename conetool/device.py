"""Choosing the torch device from ``--device auto|cpu|cuda[:k]``."""

from __future__ import annotations

import torch

from .errors import ConetoolError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``; ``cuda`` / ``cuda:k`` (checked to exist)."""
    if isinstance(name, torch.device):
        return name
    if name is not None and not isinstance(name, str):
        raise ConetoolError(
            f"--device {name!r} is not a device. Use 'auto', 'cpu', 'cuda' or 'cuda:K' (a str), "
            "or a torch.device."
        )
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConetoolError(
            f"--device {name!r} is not a device. Use auto, cpu, cuda or cuda:K."
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConetoolError(
                f"--device {name} asks for CUDA, but this machine has no usable CUDA device "
                f"(torch {torch.__version__}). Use --device cpu or --device auto."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConetoolError(
                f"--device {name}: this machine has {count} CUDA device(s), "
                f"cuda:0..cuda:{count - 1}. Pick one of those."
            )
    elif device.type != "cpu":
        raise ConetoolError(f"--device {name!r} is not supported. Use auto, cpu, cuda or cuda:K.")
    return device
