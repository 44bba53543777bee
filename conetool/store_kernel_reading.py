"""Reading one stored kernel: whether a step is current, whether its file matches its record
(header only), and its tensor loaded checked (finite, of the store's dtype, of this store and not
of one that replaced it), with messages that name the file, the nearest stored steps
(:func:`nearest_steps`) and the ``kernels`` run that recomputes it."""

from __future__ import annotations

import torch

from . import paths
from .choices import step_or_last
from .errors import StoreError
from .store_kernel_files import is_kernel_of
from .store_manifest import kernel_file_problem, read_finite_kernel
from .store_replaced import ReplacedWatch

__all__ = ["KernelReading", "nearest_steps"]


def nearest_steps(steps: list[int], step: int, count: int = 5) -> str:
    """The ``count`` stored steps nearest to ``step``, as text for error messages."""
    if not steps:
        return "none"
    near = sorted(sorted(steps, key=lambda s: abs(s - step))[:count])
    return ", ".join(str(s) for s in near)


class KernelReading(ReplacedWatch):
    """A store whose kernels are read one step at a time (a base of
    :class:`conetool.store.Store`)."""

    def is_current(self, step: int, fingerprint: str) -> bool:
        """True when ``step`` is stored, its kernel file exists and its source is unchanged."""
        record = self.record(step)
        return (
            record is not None
            and record.fingerprint == fingerprint
            and (self.root / record.kernel).is_file()
        )

    def kernel_file_problem(self, step: int) -> str | None:
        """Why the kernel file of ``step`` does not match its manifest record, or None when it
        does (header only: metadata, embedded record, tensor shape; no data read)."""
        record = self.record(step)
        if record is None:
            return f"step {step} is not in {paths.MANIFEST_NAME}"
        with self._manifest_guard:
            size = (self.manifest.get("probe") or {}).get("size")
        return kernel_file_problem(self.root / record.kernel, step, self.identity, record, size)

    def load_kernel(self, step: int | str) -> torch.Tensor:
        """The stored kernel of ``step`` (shape per the manifest's layout); checked finite and of
        the store's dtype (a :class:`StoreError` naming the file otherwise). ``step``: an int,
        or ``"last"`` (the last stored step), as ``--ref`` takes them."""
        wanted = step_or_last(step)
        stored = [] if isinstance(wanted, int) else self.steps()  # read only when needed
        if wanted is None or (wanted == "last" and not stored):
            held = (
                f"it holds {len(stored)} step(s), {stored[0]} to {stored[-1]}"
                if stored
                else "it holds no kernel yet (conetool kernels computes them)"
            )
            raise StoreError(
                f"load_kernel(step={step!r}): pass a stored step of {self.root} as an int, e.g. "
                f"load_kernel({stored[-1] if stored else 0}), or 'last'; {held}."
            )
        step = stored[-1] if wanted == "last" else int(wanted)
        record = self.record(step)
        if record is None:
            raise StoreError(
                f"step {step} is not in store {self.root}; stored steps: "
                f"{nearest_steps(self.steps(), step)}."
            )
        try:
            kernel, meta = read_finite_kernel(
                self.root / record.kernel,
                "kernel file",
                unreadable=f"Recompute it: {self.kernels_command()} (it redoes missing or "
                "damaged steps), or pass --skip-bad.",
                non_finite=f"Delete it and rerun {self.kernels_command()}, or pass --skip-bad to "
                "leave the step out.",
            )
        except StoreError as exc:
            if self.replaced():  # the file went with the store it belonged to
                raise self.replaced_error() from exc
            raise
        if not is_kernel_of(meta, self.identity, record) and self.replaced():
            raise self.replaced_error()  # the new store's kernel, now at that path
        dtype = self.identity.dtype  # "float32" or "float64", as kernels --dtype wrote it
        if str(kernel.dtype) != f"torch.{dtype}":  # written or changed outside conetool
            found = str(kernel.dtype).removeprefix("torch.")
            raise StoreError(
                f"kernel file {self.root / record.kernel} holds a {found} tensor, not the "
                f"{dtype} of the store's kernels ({paths.MANIFEST_NAME}: dtype {dtype}). "
                f"Delete that file and rerun {self.kernels_command()} to recompute it, or pass "
                "--skip-bad to leave the step out."
            )
        return kernel
