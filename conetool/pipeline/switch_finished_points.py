"""The switch points a store holds: a point's record (:class:`SwitchPoint`) and its reuse key,
one finished point read back for a rerun (and whether only its checkpoint's hash can tell, from
the files' sizes), every point of a spec and T for results.csv, and whether a sweep was begun
with a spec. A point is reused only for the same spec, T and checkpoint content
(its key), and only while the optimizer state file its momentum came from is unchanged
(:mod:`conetool.pipeline.switch_momentum_source`); a damaged point file is computed again."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paths
from ..checkpoints import CheckpointRef
from ..loop import Row
from ..spec import Spec
from .switch_momentum_source import source_changed


@dataclass(frozen=True)
class SwitchPoint:
    """The linearized continuation from step ``at`` to ``until``.

    Attributes:
        at: t, the step of the checkpoint the linearized model starts from.
        until: T, the step it is trained to.
        test_acc, test_loss: the linearized model's accuracy (a fraction in ``[0, 1]``) and mean
            cross-entropy on the test split at T.
        train_acc, train_loss: the same on the training batches, averaged over the steps since
            the metrics row before T's (the last row that trained a step); NaN when no step was
            trained (``at == until``).
        momentum: where the optimizer's momentum came from: ``"saved"`` (the optimizer state
            saved beside the checkpoint) or ``"fresh"`` (starting at zero).
        seconds: wall-clock seconds the point's training took (a reused point: when it was
            computed), rounded to 0.001.
        rows: the metrics rows along the way (as :attr:`conetool.TrainResult.metrics`).
        reused: read back from the store (same spec, T and checkpoint), not computed now.
        momentum_said: what the point said of its momentum when it was computed (why it starts
            at zero, or the hyperparameters its saved state was saved with otherwise than the
            spec's), as its record keeps it for the reruns that reuse it: ``{"one": ..., "many":
            ..., "warning": bool}``, a
            :class:`~conetool.pipeline.switch_momentum_notes.MomentumNote` without its step;
            None when it said nothing, or when its record is an older conetool's (which did not
            keep it).
    """

    at: int
    until: int
    test_acc: float
    test_loss: float
    train_acc: float
    train_loss: float
    momentum: str
    seconds: float
    rows: list[Row] = field(default_factory=list)
    reused: bool = False
    momentum_said: dict[str, Any] | None = None


def point_key(spec: Spec, until: int, fingerprint: str) -> dict[str, Any]:
    """The reuse key of a point: the spec (its hash), T and the content ``fingerprint`` of the
    checkpoint it starts from; a point is reused only under the same key."""
    return {"spec_hash": spec.hash(), "until": until, "source_fingerprint": fingerprint}


def read_point(
    store: Path, t: int, key: dict[str, Any], source: dict[str, Any] | None = None
) -> SwitchPoint | None:
    """A finished point of the same spec, T and checkpoint content, or None; ``source``: the
    state file its momentum would come from now
    (:func:`~conetool.pipeline.switch_momentum_source.momentum_source`), None not to check: a
    point that recorded another (an older store's records none) is None too."""
    payload = point_payload(store, t, key)
    if payload is None or source_changed(payload, source) is not None:
        return None
    return reused_point(payload)


def reused_point(payload: dict[str, Any]) -> SwitchPoint:
    """The finished point whose JSON is ``payload``, marked reused. Strict JSON holds a NaN
    (the train loss at step t, which the linearized model does not measure; a diverged
    point's metrics) as null: those come back as NaN, as the point held them when computed."""
    fields = {k: payload[k] for k in SwitchPoint.__dataclass_fields__ if k in payload}
    for name in _METRICS:
        if name in fields and fields[name] is None:
            fields[name] = math.nan
    if isinstance(fields.get("rows"), list):
        fields["rows"] = [_row(row) for row in fields["rows"]]
    fields["momentum_said"] = recorded_said(payload.get("momentum_said"))
    return SwitchPoint(**{**fields, "reused": True})


def recorded_said(value: Any) -> dict[str, Any] | None:
    """What a point's record says it said of its momentum (:attr:`SwitchPoint.momentum_said`),
    when it has that shape; None for nothing said, a record an older conetool wrote (no such
    entry) or one edited into another shape (the point is reused all the same: what it said
    is not part of what makes it reusable)."""
    if not isinstance(value, dict):
        return None
    one, many, warning = value.get("one"), value.get("many"), value.get("warning")
    if not (isinstance(one, str) and isinstance(many, str) and isinstance(warning, bool)):
        return None
    return {"one": one, "many": many, "warning": warning}


#: the float fields of a point that a NaN may fill
_METRICS = ("test_acc", "test_loss", "train_acc", "train_loss")


def _row(row: Any) -> Any:
    """A metrics row read back from JSON, its nulls NaN again (anything else as it was)."""
    if not isinstance(row, dict):
        return row
    return {k: math.nan if v is None else v for k, v in row.items()}


def point_payload(store: Path, t: int, key: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON of the point at ``t`` in ``store`` when it has the reuse ``key``, else None (no
    file; damaged: recomputed and rewritten; computed for another spec, T or checkpoint)."""
    payload = read_point_payload(paths.switch_point(store, t))
    return payload if payload is not None and payload.get("key") == key else None


def _number(value: Any, *, nan: bool = False) -> bool:
    """Whether ``value`` is a JSON number (no ``true``/``false``), or null where ``nan``."""
    if value is None:
        return nan
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_point(payload: dict[str, Any]) -> bool:
    """Whether ``payload`` is a point's record: a key object, ``at`` and ``until`` whole
    numbers, the metrics numbers or null (NaN), the momentum's origin a string, the seconds a
    number, the rows (when there) a list. A point file edited or damaged into another shape is
    no finished point: computed again, not read into a sweep or results.csv."""
    if not isinstance(payload.get("key"), dict):
        return False
    if not all(
        isinstance(payload.get(k), int) and not isinstance(payload.get(k), bool)
        for k in ("at", "until")
    ):
        return False
    if not all(_number(payload.get(k), nan=True) and k in payload for k in _METRICS):
        return False
    if not isinstance(payload.get("momentum"), str) or not _number(payload.get("seconds")):
        return False
    return isinstance(payload.get("rows", []), list)


def read_point_payload(path: Path) -> dict[str, Any] | None:
    """The JSON object of the point file ``path`` when it is a point's record (:func:`is_point`);
    None when there is none or it is damaged."""
    payload = read_payload(path)
    return payload if payload is not None and is_point(payload) else None


def read_payload(path: Path) -> dict[str, Any] | None:
    """The JSON object of the point file ``path``; None when there is none or it is damaged."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def payload_to_check(
    store: Path, t: int, spec: Spec, until: int, ref: CheckpointRef
) -> dict[str, Any] | None:
    """The JSON of the point at ``t`` in ``store`` when only the fingerprint of the checkpoint
    ``ref`` (a hash of all its bytes) can tell whether it is finished: a point of ``spec`` and
    ``until`` whose checkpoint had the size ``ref``'s files have now (its key's
    ``"<bytes>:<sha256>"``). None without reading ``ref``, its files' sizes alone: no such point
    (no file, a damaged one, another spec or T, a checkpoint of another size; or ``ref``'s files
    cannot be looked at, as its load will say), so that the point is to do."""
    payload = read_point_payload(paths.switch_point(store, t))
    key = None if payload is None else payload.get("key")
    if not isinstance(key, dict) or key.get("spec_hash") != spec.hash():
        return None
    recorded = key.get("source_fingerprint")
    if key.get("until") != until or not isinstance(recorded, str):
        return None
    try:
        size = sum(path.stat().st_size for path in ref.paths)
    except OSError:
        return None
    return payload if recorded.split(":", 1)[0] == str(size) else None


def all_points(
    store: Path,
    spec: Spec,
    until: int,
    current: list[SwitchPoint],
    fingerprint_now: Callable[[int], str | None] = lambda at: None,
    warnings: list[str] | None = None,
    source_now: Callable[[int], dict[str, Any] | None] = lambda at: None,
) -> list[SwitchPoint]:
    """This sweep's points plus those earlier sweeps left in the store for the same spec and T.

    ``fingerprint_now(t)``: the fingerprint of the run's checkpoint of step t now (None: no
    such checkpoint, or not to be checked). An earlier point whose checkpoint has changed since
    (a run replaced under the same spec) is left out, and ``warnings`` says so (a loss).
    ``source_now(t)``: the state file a point of step t would take its momentum from now
    (:func:`~conetool.pipeline.switch_momentum_source.momentum_source`; None: not to be
    checked). An earlier point that recorded another (one a rerun of it would compute again:
    :func:`source_changed`) is left out too, and ``warnings`` names it, why, and the command
    that computes it again: its ``momentum`` is not the one its point would have now. An earlier
    point's metrics that JSON holds as null (a NaN) are NaN again (:func:`reused_point`), as in
    a point of this sweep: results.csv writes them as the sweep that computed them did."""
    points = {p.at: p for p in current}
    changed: list[int] = []
    stale: dict[int, str] = {}  # at -> how its momentum's state file changed since
    for payload in _stored_points(store):
        key = payload.get("key", {})
        if key.get("spec_hash") != spec.hash() or key.get("until") != until:
            continue
        if payload.get("at") not in points:
            now = fingerprint_now(payload.get("at"))
            if now is not None and key.get("source_fingerprint") != now:
                changed.append(payload.get("at"))
                continue
            why = source_changed(payload, source_now(payload.get("at")))
            if why is not None:
                stale[payload["at"]] = why
                continue
            points[payload["at"]] = reused_point(payload)  # (its nulls NaN again)
    if changed and warnings is not None:
        at = " ".join(str(t) for t in sorted(changed))
        warnings.append(
            f"left out of results.csv the points of earlier sweeps at {at}: their checkpoints "
            f"changed since they were computed. Recompute them: conetool switch --at "
            f"{at.replace(' ', ',')}."
        )
    if stale and warnings is not None:
        steps = sorted(stale)
        whys = "; ".join(f"t={t}: {stale[t]}" for t in steps)
        warnings.append(
            f"left out of results.csv the points of earlier sweeps at {' '.join(map(str, steps))}"
            f": the optimizer state file their momentum comes from changed since they were "
            f"computed ({whys}). Recompute them: conetool switch --at "
            f"{','.join(map(str, steps))}."
        )
    return [points[t] for t in sorted(points)]


def _stored_points(store: Path) -> Iterator[Any]:
    """The payload (a JSON object) of each readable point file in ``store``
    (``switch/at_XXXXXX.json``), by ``at`` (damaged ones are left out: computed again)."""
    for path in sorted(paths.switch_dir(store).glob("at_*.json")):
        payload = read_point_payload(path)
        if payload is not None:
            yield payload


def sweep_begun(store: Path, spec: Spec) -> bool:
    """Whether ``store`` holds a point a sweep computed with ``spec`` (the same spec hash, any
    T): a sweep begun with the spec, which goes on with it (see
    :func:`~conetool.pipeline.run_switch.switch`'s refusal of a spec no training could learn
    from)."""
    for payload in _stored_points(store):
        key = payload.get("key")
        if isinstance(key, dict) and key.get("spec_hash") == spec.hash():
            return True
    return False
