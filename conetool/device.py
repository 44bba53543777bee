"""Choosing the torch device from ``--device auto|cpu|cuda[:k]``."""

from __future__ import annotations

import torch

from .errors import ConetoolError


def resolve_device(
    name: str | torch.device | None = "auto", *, argument: str = "--device"
) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``; ``cuda`` / ``cuda:k`` (checked to exist).

    ``argument`` is what the messages call the value: the flag (``"--device"``, said as
    ``--device cuda``) or a Python argument (``"device"``, said as ``device='cuda'``).

    Raises:
        ConetoolError: a value that is no device name, an unknown or unsupported one, CUDA asked
            for on a machine without it, or a CUDA index the machine lacks; the message names
            ``argument`` and what to pass.
    """
    if isinstance(name, torch.device):
        return name
    flag = argument.startswith("-")

    def said(value: object, quoted: bool = True) -> str:
        if not flag:
            return f"{argument}={value!r}"
        return f"{argument} {value!r}" if quoted else f"{argument} {value}"

    def use(*values: str, each: bool = False) -> str:
        shown = (
            [f"{argument} {v}" for v in values]
            if flag and each
            else (list(values) if flag else [f"{argument}={v!r}" for v in values])
        )
        return ", ".join(shown[:-1]) + f" or {shown[-1]}"

    if name is not None and not isinstance(name, str):
        raise ConetoolError(
            f"{said(name)} is not a device. Use 'auto', 'cpu', 'cuda' or 'cuda:K' (a str), "
            "or a torch.device."
        )
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConetoolError(
            f"{said(name)} is not a device. Use {use('auto', 'cpu', 'cuda', 'cuda:K')}."
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConetoolError(
                f"{said(name, quoted=False)} asks for CUDA, but this machine has no usable CUDA "
                f"device (torch {torch.__version__}). Use {use('cpu', 'auto', each=True)}."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConetoolError(
                f"{said(name, quoted=False)}: this machine has {count} CUDA device(s), "
                f"cuda:0..cuda:{count - 1}. Pick one of those."
            )
    elif device.type != "cpu":
        raise ConetoolError(
            f"{said(name)} is not supported. Use {use('auto', 'cpu', 'cuda', 'cuda:K')}."
        )
    return device
