"""The learning rates a run's optimizer states hold at its checkpoints: the evidence
:func:`conetool.pipeline.saved_results.unrecorded_schedule` gives when a researcher's own spec
leaves ``train.schedule`` out (the verdict then reads the rate as constant).

A loop that saves ``{"model": ..., "optimizer": optimizer.state_dict()}`` keeps, in each
``param_groups[i]["lr"]``, the rate its optimizer had at that step (a scheduler writes it there).
Only those numbers are read: from a ``torch.save`` file's pickle with its tensors memory-mapped
(a zip archive, as torch saves by default: no buffer is read; a file of the old non-zip
format is read whole), from the metadata of the state
``conetool train`` saves beside a checkpoint (``step_XXXXXX.optim.safetensors``: its header
alone), or from a Hugging Face folder's ``optimizer.pt``; at most :data:`MOST_READ` checkpoints,
spread over the stored steps. A file that cannot be read, holds no state, or is no longer the
one the kernel was computed from (another size) gives nothing: the rates are evidence, never a
reason to fail."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import paths
from ..checkpoint_optimizer import entry_of, load_state_file
from ..checkpoints._safetensors_format import read_header
from ..errors import ConetoolError
from ..store import Store
from ..trainer_optimizer import OPTIMIZER_FILE
from .noise_estimate import moved

__all__ = ["MOST_READ", "SAME", "SavedRates", "saved_rates"]

#: the most checkpoints whose optimizer state is read (the first, the last, and spread between)
MOST_READ = 10

#: two rates within this relative difference are the same rate
SAME = 1e-6

#: the most runs of one rate :meth:`SavedRates.shown` lists (the first ones and the last ones)
_MOST_SHOWN = 6


@dataclass(frozen=True)
class SavedRates:
    """The rates the optimizer states hold: ``rates``, ``(step, (lr of each parameter group))``
    for each checkpoint read that holds one, in step order (at least two); ``of``: how many
    stored steps there are; ``where``: the checkpoint directory they were read in."""

    rates: tuple[tuple[int, tuple[float, ...]], ...]
    of: int
    where: str

    @property
    def constant(self) -> bool:
        """Whether every parameter group holds one rate (to :data:`SAME`) at every step read."""
        first = self.rates[0][1]
        return all(
            len(lrs) == len(first) and all(_same(a, b) for a, b in zip(lrs, first, strict=True))
            for _, lrs in self.rates
        )

    @property
    def fell(self) -> bool:
        """Whether any parameter group's rate is below (past :data:`SAME`) one it held at an
        earlier step read; rates that only rose (a warmup, then one rate) did not fall."""
        return any(
            lrs[g] < before[g] and not _same(lrs[g], before[g])
            for i, (_, lrs) in enumerate(self.rates)
            for _, before in self.rates[:i]
            for g in range(len(lrs))
        )

    def shown(self) -> str:
        """The rates read, compactly: ``"lr 0.1 at steps 0 to 2000, 0.01 at step 3000 (x0.1),
        0.001 at steps 6000 to 9000 (x0.01)"``: the first parameter group whose rate changes
        (``param_groups[1]``'s named), each run of one rate once, its factor to the largest rate
        read (a warmup's first rates below it too; none beside the largest)."""
        group = next(
            (
                g
                for g in range(len(self.rates[0][1]))
                if not all(
                    len(lrs) > g and _same(lrs[g], self.rates[0][1][g]) for _, lrs in self.rates
                )
            ),
            0,
        )
        values = [(step, lrs[group]) for step, lrs in self.rates if len(lrs) > group]
        runs: list[list[tuple[int, float]]] = []
        for step, lr in values:
            if runs and _same(runs[-1][0][1], lr):
                runs[-1].append((step, lr))
            else:
                runs.append([(step, lr)])
        top = max(lr for _, lr in values)
        said = [_run(run, top) for run in runs]
        if len(said) > _MOST_SHOWN:
            said = [*said[: _MOST_SHOWN - 2], "...", said[-1]]
        name = "lr" if group == 0 else f"param_groups[{group}]'s lr"
        return f"{name} {', '.join(said)}"

    def steps_read(self) -> str:
        """``"3 of its 12 checkpoints read"``."""
        return f"{len(self.rates)} of its {self.of} checkpoints read"


def saved_rates(store: Store, steps: Sequence[int], ckpts: Path | None = None) -> SavedRates | None:
    """The learning rates held by the optimizer states saved with the checkpoints of ``steps``
    (the stored steps the verdict reads; at most :data:`MOST_READ` of them read, spread evenly,
    the first and the last among them); ``ckpts``: the checkpoint directory when the run moved
    since ``kernels`` (``--ckpts``). None when fewer than two of those read hold one, or when
    they hold different numbers of parameter groups."""
    chosen = _spread(sorted(steps))
    recorded = store.manifest.get("checkpoints")
    base = ckpts if ckpts is not None else Path(recorded) if isinstance(recorded, str) else None
    rates: list[tuple[int, tuple[float, ...]]] = []
    where: Path | None = base
    for step in chosen:
        record = store.record(step)
        if record is None or not record.source:
            continue
        source = Path(record.source[0])
        if ckpts is not None:
            source = moved(source, recorded if isinstance(recorded, str) else None, ckpts)
        lrs = _rates_at(source, step, base, record.size if len(record.source) == 1 else None)
        if lrs is not None:
            rates.append((step, lrs))
            where = where if where is not None else source.parent
    if len(rates) < 2 or where is None or len({len(lrs) for _, lrs in rates}) > 1:
        return None  # (groups added or removed midway: no one rate of each to compare)
    return SavedRates(tuple(rates), len(steps), str(where))


def _spread(steps: list[int]) -> list[int]:
    """At most :data:`MOST_READ` of ``steps``, evenly spread, the first and the last kept."""
    if len(steps) <= MOST_READ:
        return steps
    last = len(steps) - 1
    return sorted({steps[round(i * last / (MOST_READ - 1))] for i in range(MOST_READ)})


def _rates_at(
    source: Path, step: int, base: Path | None, size: int | None
) -> tuple[float, ...] | None:
    """The rates of the state saved with the checkpoint ``source`` of ``step``: beside it, as
    ``conetool train`` saves it (beside a folder's checkpoint: in the run's directory ``base``),
    a Hugging Face folder's ``optimizer.pt``, else inside the file itself; None without one."""
    in_folder = base is not None and source.parent != base
    beside = paths.optimizer_state(base if in_folder and base is not None else source.parent, step)
    found = _from_safetensors(beside) if beside.is_file() else None
    if found is None and in_folder and (source.parent / OPTIMIZER_FILE).is_file():
        found = _from_torch(source.parent / OPTIMIZER_FILE, whole=True)
    if found is None and source.suffix != ".safetensors" and source.is_file():
        try:
            if size is not None and source.stat().st_size != size:
                return None  # another file than the kernel's: its rates are another run's
        except OSError:
            return None
        found = _from_torch(source, whole=False)
    return found


def _from_safetensors(path: Path) -> tuple[float, ...] | None:
    """The rates in the ``param_groups`` metadata of a state ``conetool train`` saved (its header
    alone is read)."""
    try:
        groups = json.loads(read_header(path).metadata["param_groups"])
    except (ConetoolError, OSError, KeyError, ValueError, TypeError):
        return None
    return _rates(groups)


def _from_torch(path: Path, *, whole: bool) -> tuple[float, ...] | None:
    """The rates of the optimizer state in the ``torch.save`` file ``path`` (memory-mapped: its
    tensors are not read): the file's whole object (``whole``: an ``optimizer.pt``) or the first
    of the checkpoint dict's optimizer entries."""
    try:
        obj, failed = load_state_file(path)
    except Exception:  # any failure (a zip torch cannot read, ...): no evidence, none said
        return None
    if failed is not None:
        return None
    if not whole:
        found = entry_of(obj)
        obj = None if found is None else found[1]
    groups = obj.get("param_groups") if isinstance(obj, Mapping) else None
    return _rates(groups)


def _rates(groups: Any) -> tuple[float, ...] | None:
    """Each parameter group's ``lr`` (a number, or a one-element tensor), when all are finite."""
    if not isinstance(groups, list) or not groups:
        return None
    rates: list[float] = []
    for group in groups:
        lr = group.get("lr") if isinstance(group, Mapping) else None
        if isinstance(lr, torch.Tensor) and lr.numel() == 1:
            lr = lr.item()
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr):
            return None
        rates.append(float(lr))
    return tuple(rates)


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=SAME, abs_tol=0.0)


def _run(run: list[tuple[int, float]], top: float) -> str:
    """One run of a rate: ``"0.01 at steps 3000 to 5000 (x0.1)"``."""
    lr = run[0][1]
    at = f"step {run[0][0]}" if len(run) == 1 else f"steps {run[0][0]} to {run[-1][0]}"
    factor = "" if top <= 0 or _same(lr, top) else f" (x{lr / top:.3g})"
    return f"{lr:.3g} at {at}{factor}"
