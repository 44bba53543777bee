"""The verdict's vocabulary: the regimes, the thresholds (:class:`VerdictRules`) and the
result (:class:`Verdict`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from conetool.geometry import GeometryError

__all__ = ["REGIMES", "Regime", "Verdict", "VerdictRules"]

Regime = Literal["no-two-phase", "lazy", "cone", "drift-after-phase-I", "undetermined"]

#: regime -> (a few words, one sentence): how the README, the CLI and the report name it.
REGIMES: dict[str, tuple[str, str]] = {
    "no-two-phase": (
        "no two-phase pattern",
        "the kernel velocity never falls for good: no two phases, as in the paper's Fig. 3",
    ),
    "lazy": (
        "the kernel froze",
        "the kernel froze: after Phase I (or from the start) it stops moving, Fort et al.'s "
        "lazy regime",
    ),
    "cone": (
        "two phases, then a cone",
        "after a fast Phase I the kernel keeps moving, but inside a bounded region: the cone "
        "effect",
    ),
    "drift-after-phase-I": (
        "two phases, then drift",
        "after a fast Phase I the kernel keeps moving away, with no bound in sight",
    ),
    "undetermined": (
        "the stored kernels do not settle it",
        "the stored kernels do not settle the question; the explanation says what is missing "
        "and how to get it",
    ),
}


@dataclass(frozen=True)
class VerdictRules:
    """Thresholds of :func:`phase_verdict`; the module docstring states the rule that uses them.

    Attributes:
        min_drop: the velocity must fall by at least this factor across Phase I's end
            (finite, > 1).
        velocity_dt: the paper's ``dt``; ``None`` picks
            :func:`conetool.geometry.default_velocity_dt`: the spacing that covers the run best,
            or the smallest multiple of a checkpoint spacing that is at least 1/50 of the run
            and covers it as well.
        freeze_factor: a Phase II velocity falling by this factor (first quarter over last)
            means the kernel is freezing (finite, > 1).
        bounded_exponent: ``S ~ lag^a`` with ``a`` at most this reads as bounded motion
            (finite, >= 0, below ``drift_exponent``).
        drift_exponent: ``a`` at least this reads as drift (finite).
        plateau_tolerance: largest growth ``(last - middle) / last`` of a reference curve's
            mean S over its last and middle thirds that still counts as a plateau (in (0, 1):
            the growth is at most 1).
        lazy_level: S at or below this between any two kernels (of Phase II, or of the run)
            means frozen (in [0, 2): S is at most 2).
        reference_fractions: default Phase II references, as fractions of Phase II's length.
        min_steps: fewest stored steps for any verdict.
        min_phase2_steps: fewest stored steps in Phase II to judge it.
        min_window_points: fewest stored steps in each third a reference curve is judged on.
    """

    min_drop: float = 5.0
    velocity_dt: int | None = None
    freeze_factor: float = 5.0
    bounded_exponent: float = 0.25
    drift_exponent: float = 0.5
    plateau_tolerance: float = 0.15
    lazy_level: float = 1e-4
    reference_fractions: tuple[float, ...] = (0.1, 0.3, 0.5)
    min_steps: int = 8
    min_phase2_steps: int = 8
    min_window_points: int = 2

    def __post_init__(self) -> None:
        self._check_types()
        problems = []

        def bad(name: str, need: str) -> None:
            value = getattr(self, name)
            flag = _FLAGS.get(name)
            problems.append(
                f"{name}={value} ({flag} {value}): needs {need}"
                if flag
                else f"{name}={value} (needs {need})"
            )

        # the ranges in which each threshold still tells runs apart (NaN fails every test):
        # a factor of at most 1 or inf, a tolerance that every curve meets, a level that every
        # S is under (S is at most 2) make the reading trivial or meaningless
        if not 1.0 < self.min_drop < math.inf:
            bad("min_drop", "a finite factor > 1")
        if self.velocity_dt is not None and self.velocity_dt < 1:
            bad("velocity_dt", "a positive step count")
        if not 1.0 < self.freeze_factor < math.inf:
            bad("freeze_factor", "a finite factor > 1")
        exponents_finite = True
        if not 0.0 <= self.bounded_exponent < math.inf:
            exponents_finite = False
            bad("bounded_exponent", "a finite exponent >= 0 (S growing like lag^0 is bounded)")
        if not math.isfinite(self.drift_exponent):
            exponents_finite = False
            bad("drift_exponent", "a finite exponent")
        if exponents_finite and not self.bounded_exponent < self.drift_exponent:
            problems.append(
                f"bounded_exponent={self.bounded_exponent} (--bounded-exponent "
                f"{self.bounded_exponent}), drift_exponent={self.drift_exponent} "
                f"(--drift-exponent {self.drift_exponent}): needs bounded < drift"
            )
        if not self.reference_fractions or not all(
            0.0 <= f < 1.0 for f in self.reference_fractions
        ):
            bad("reference_fractions", "values in [0, 1)")
        if not 0.0 < self.plateau_tolerance < 1.0:
            bad(
                "plateau_tolerance",
                "a fraction in (0, 1): a curve's growth (last - middle) / last is at most 1, "
                "so 1 or more reads every curve as a plateau",
            )
        if not 0.0 <= self.lazy_level < 2.0:
            bad(
                "lazy_level",
                "an S in [0, 2): S is at most 2, so 2 or more reads every run as lazy",
            )
        if self.min_steps < 3:
            bad("min_steps", ">= 3")
        if self.min_phase2_steps < 4:
            bad("min_phase2_steps", ">= 4")
        if self.min_window_points < 1:
            bad("min_window_points", ">= 1")
        if problems:
            raise GeometryError("invalid verdict rules: " + "; ".join(problems) + ".")

    def _check_types(self) -> None:
        """Each field as its annotation says, numpy numbers made plain ``float`` and ``int``
        (``to_dict`` goes into JSON); a wrong type (``min_drop="3"``, ``velocity_dt=2.5``) is a
        ConetoolError naming the field, not a raw TypeError from the range checks."""
        from conetool.choices import float_argument, int_argument
        from conetool.errors import ConetoolError

        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "reference_fractions":
                if isinstance(value, str | bytes) or not isinstance(value, Iterable):
                    raise ConetoolError(
                        f"reference_fractions={value!r} is not a sequence of fractions: pass "
                        "e.g. reference_fractions=(0.1, 0.3, 0.5)."
                    )
                checked: object = tuple(
                    float_argument(v, f"reference_fractions[{i}]") for i, v in enumerate(value)
                )
            elif f.type == "float":
                checked = float_argument(value, f.name)
            else:  # int, or int | None
                checked = int_argument(value, f.name, optional="None" in str(f.type))
            object.__setattr__(self, f.name, checked)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, ``reference_fractions`` as a list."""
        out = asdict(self)
        out["reference_fractions"] = list(self.reference_fractions)
        return out


@dataclass(frozen=True)
class Verdict:
    """What the distances say.

    Attributes:
        regime: one of :data:`REGIMES`.
        phase1_end: the stored step nearest the end of Phase I; ``None`` without two phases.
        numbers: the measurements behind the verdict (JSON-ready): ``velocity`` (the fit, the
            drop and its range), ``criteria`` (each Phase II reading with its value, what it
            rests on, what it reads and whether it sits at the noise floor), ``references``
            (each judged curve), ``user_references`` (each reference the user gave: used, or
            why not), ``agree``, ``noise_floor`` and the ``rules``.
        explanation: one paragraph, with the numbers, that says why.
    """

    regime: Regime
    phase1_end: int | None
    numbers: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``regime``, ``phase1_end``, ``numbers``, ``explanation``."""
        return {
            "regime": self.regime,
            "phase1_end": self.phase1_end,
            "numbers": self.numbers,
            "explanation": self.explanation,
        }


#: The ``conetool distance`` flag of each rule that has one (the others are Python-only).
_FLAGS = {
    "min_drop": "--min-drop",
    "velocity_dt": "--velocity-dt",
    "freeze_factor": "--freeze-factor",
    "bounded_exponent": "--bounded-exponent",
    "drift_exponent": "--drift-exponent",
    "plateau_tolerance": "--plateau-tolerance",
    "lazy_level": "--lazy-level",
}
