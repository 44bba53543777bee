"""The records of a store's companion files in its manifest: the evaluation set (``eval``, its
``eval_kernels/`` files K(eval, probe) of shape ``(m, n)``) and the parameter groups
(``layer_groups``, its ``layer_kernels/`` files of one ``(n, n)`` kernel per group), each
recorded, replaced (the old set's files deleted), checked and read for a step, and recovered from
their files when a damaged or deleted manifest is rebuilt. The files themselves are read and
written by :mod:`conetool.store_companions`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from . import paths
from . import store_companions as companions
from .store_records import StoreRecords

__all__ = ["CompanionRecords"]

#: Why no file of a store whose clearing is deferred is current: it is the replaced store's.
_REPLACED = "the replaced store's file, cleared before this store's first write (--overwrite)"


class CompanionRecords(StoreRecords):
    """A store's evaluation set and parameter groups, and the per-step files made with them (a
    base of :class:`conetool.store.Store`)."""

    # ----------------------------------------------------------------- eval kernels
    @property
    def eval_record(self) -> dict[str, Any] | None:
        """The evaluation set recorded in the manifest (size, split, seed, hash, file), if any."""
        with self._manifest_guard:
            raw = self.manifest.get("eval")
        return raw if isinstance(raw, dict) else None

    def record_eval(self, record: dict[str, Any]) -> list[str]:
        """Record the evaluation set ``record`` (size, split, seed, hash, file) in the manifest,
        written now when it changed. When it replaces another evaluation set, the eval kernel
        files of the old one are deleted (they carry its hash and would never be used again).
        Returns the warnings to show (the replacement: files deleted)."""
        old = self.eval_record
        removed = self._record_companion("eval", record, paths.eval_kernels_dir, "eval_hash")
        if removed is None:
            return []
        assert old is not None
        return [companions.eval_set_changed_note(self.root, old, record, removed)]

    def _record_companion(
        self,
        key: str,
        record: dict[str, Any],
        folder: Callable[[Path], Path],
        hash_key: str,
    ) -> int | None:
        """Record ``record`` under manifest ``key`` (written now when it changed). When it
        replaces a record of another ``hash``, delete the files in ``folder`` whose metadata
        ``hash_key`` is not the new hash and return how many; else None."""
        with self._manifest_guard:
            raw = self.manifest.get(key)
            old = raw if isinstance(raw, dict) else None
            if old == record:
                return None
            self.manifest[key] = dict(record)
            if self.owner:
                self._write_manifest()
        if old is None or old.get("hash") == record.get("hash"):
            return None
        return companions.delete_other_sets(folder(self.root), hash_key, record.get("hash"))

    def _companion_metadata(
        self, step: int, fingerprint: str, hash_key: str, hash_value: str
    ) -> dict[str, str]:
        """What makes a per-step companion file current (see
        :func:`conetool.store_companions.companion_metadata`), for this store's identity."""
        return companions.companion_metadata(self.identity, step, fingerprint, hash_key, hash_value)

    def eval_kernel_problem(self, step: int, eval_hash: str, fingerprint: str) -> str | None:
        """Why the eval kernel of ``step`` cannot be used with the evaluation set ``eval_hash``
        and the source checkpoint ``fingerprint``, or None when it can (header only)."""
        if self._clearing_deferred:
            return _REPLACED
        expected = self._companion_metadata(step, fingerprint, "eval_hash", eval_hash)
        size = (self.eval_record or {}).get("size")
        return companions.eval_kernel_problem(self.root, step, expected, size)

    def write_eval_kernel(
        self, step: int, kernel: torch.Tensor, eval_hash: str, fingerprint: str
    ) -> Path:
        """Write the cross kernel K(eval, probe) of ``step`` atomically. It carries what makes it
        current (evaluation set, probe set, spec, kind, dtype, source fingerprint), so the manifest
        is not touched: any rank may write it."""
        self._refuse_while_deferred(f"writing the eval kernel of step {step}")
        metadata = self._companion_metadata(step, fingerprint, "eval_hash", eval_hash)
        return companions.write_eval_kernel(self.root, step, kernel, metadata)

    def load_eval_kernel(self, step: int) -> torch.Tensor:
        """The stored cross kernel K(eval, probe) of ``step``; check it with
        :meth:`eval_kernel_problem` first."""
        return companions.load_eval_kernel(self.root, step, self.kernels_command())

    # ----------------------------------------------------------------- layer kernels
    @property
    def layer_record(self) -> dict[str, Any] | None:
        """The parameter groups recorded in the manifest (``patterns``, ``groups``, ``hash``,
        ``dir``) by ``kernels --per-layer``, if any."""
        with self._manifest_guard:
            raw = self.manifest.get("layer_groups")
        return raw if isinstance(raw, dict) else None

    def record_layer_groups(self, record: dict[str, Any]) -> list[str]:
        """Record the parameter groups ``record`` in the manifest, written now when it changed.
        When it replaces another grouping, the layer files of the old one are deleted (they
        carry its hash and would never be used again). Returns the warnings to show (files
        deleted)."""
        old = self.layer_record
        removed = self._record_companion(
            "layer_groups", record, paths.layer_kernels_dir, "groups_hash"
        )
        if removed is None:
            return []
        assert old is not None
        return [companions.layer_groups_changed_note(self.root, old, record, removed)]

    def layer_kernel_problem(self, step: int, groups_hash: str, fingerprint: str) -> str | None:
        """Why the layer file of ``step`` cannot be used with the grouping ``groups_hash`` and
        the source checkpoint ``fingerprint``, or None when it can (header only)."""
        if self._clearing_deferred:
            return _REPLACED
        expected = self._companion_metadata(step, fingerprint, "groups_hash", groups_hash)
        return companions.layer_kernel_problem(self.root, step, expected)

    def write_layer_kernels(
        self,
        step: int,
        kernels: Mapping[str, torch.Tensor],
        groups: Mapping[str, list[str]],
        groups_hash: str,
        fingerprint: str,
    ) -> Path:
        """Write the per-group kernels of ``step`` atomically. The file carries what makes it
        current (grouping, probe set, spec, kind, dtype, source fingerprint), so the manifest is
        not touched: any rank may write it."""
        self._refuse_while_deferred(f"writing the layer kernels of step {step}")
        metadata = self._companion_metadata(step, fingerprint, "groups_hash", groups_hash)
        record = self.layer_record or {}
        patterns = record.get("patterns")  # of the recorded groups: a rebuilt manifest's record
        known = record.get("hash") == groups_hash and (
            patterns is None or isinstance(patterns, dict)
        )
        return companions.write_layer_kernels(
            self.root, step, kernels, groups, metadata, json.dumps(patterns) if known else None
        )

    def current_layer_steps(self) -> list[int]:
        """The stored steps whose layer file is current (the recorded grouping, the checkpoint
        the step's kernel was computed from)."""
        record = self.layer_record
        if record is None:
            return []
        wanted = str(record.get("hash"))
        return [
            step
            for step, rec in self.records().items()
            if self.layer_kernel_problem(step, wanted, rec.fingerprint) is None
        ]

    def load_layer_kernels(self, step: int) -> dict[str, torch.Tensor]:
        """The stored per-group kernels of ``step`` (group -> kernel, in the recorded order);
        check them with :meth:`layer_kernel_problem` first."""
        return companions.load_layer_kernels(
            self.root, step, self.layer_record, self.kernels_command()
        )

    # ----------------------------------------------------------------- a rebuilt manifest
    def _recover_companion_records(self, header: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Put back in a rebuilt manifest (in memory) the records of the evaluation set
        (``eval``, from ``eval.safetensors``) and of the parameter groups (``layer_groups``,
        from the layer files): without them the next ``distance`` removed its per-layer outputs
        and ``spectrum`` lost its kernel-machine accuracy, although their files were all there.
        ``header``: the run's provenance (its spec gives the probe seed the eval record keeps).
        Returns ``(notes, warnings)``: what was recovered (information: each record is the
        one its files carry), and what could not be, with the command that records it again
        (a loss: until then its files are not kept complete; also in :attr:`unrecovered`, by
        record)."""
        spec = header.get("spec")
        probe = spec.get("probe") if isinstance(spec, Mapping) else None
        seed = probe.get("seed") if isinstance(probe, Mapping) else None
        evaluated, eval_problem = companions.recovered_eval_record(self.root, seed)
        layers, layer_problem = companions.recovered_layer_record(self.root, self.identity)
        with self._manifest_guard:
            if evaluated is not None:
                self.manifest["eval"] = evaluated
            if layers is not None:
                self.manifest["layer_groups"] = layers
        notes: list[str] = []
        warnings: list[str] = []
        kept = []
        if evaluated is not None:
            kept.append(f"the evaluation set of {evaluated['size']} examples (--eval-size)")
        if layers is not None:
            kept.append(f"the parameter groups {', '.join(layers['groups'])} (--per-layer)")
        if kept:
            notes.append(
                f"recovered {' and '.join(kept)} from their files; kernels runs keep them, "
                "this one included"
            )
        if eval_problem is not None:
            size = companions.eval_size_of_kernels(self.root, self.identity)
            self.unrecovered["eval"] = (
                f"no evaluation set was recovered: {eval_problem}. Rerun "
                f"{self.kernels_command()} --eval-size {size or 'M'} (the size it had), which "
                "draws it again and keeps the eval kernels made with it"
            )
        if layer_problem is not None:
            self.unrecovered["layer_groups"] = (
                f"no parameter groups were recovered: {layer_problem}. Rerun "
                f"{self.kernels_command()} --per-layer, or --groups 'NAME=PATTERN,...' with the "
                "patterns that made them, which records them again and keeps the layer files "
                "made with the same groups; until then distance keeps its per-layer outputs "
                "as they are"
            )
        warnings += self.unrecovered.values()
        return notes, warnings
