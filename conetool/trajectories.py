"""Labelled synthetic kernel trajectories: the ground truth the phase verdict is checked on.

Each trajectory is a sequence of unit vectors standing in for the flattened, normalised kernels
``H(t) / ||H(t)||_F`` at the steps of a typical checkpoint schedule (every 5 steps up to 100, then
every 100), and its S matrix ``S = 1 - <u_i, u_j>`` is what :func:`conetool.verdict.phase_verdict`
reads. A trajectory is the sum of

- a **Phase I** motion: a rotation by the angle ``phi(t)`` in a fixed plane, with an angular speed
  that decays exponentially (from the start, or after a long fast stretch for ``late-phase-I``);
- a **Phase II** process in other directions (``phase2_dims`` of them), running all along but
  visible only once Phase I has slowed down: frozen (none), freezing (a random walk whose steps
  shrink tenfold, so its velocity falls a hundredfold), bounded (an Ornstein-Uhlenbeck walk: the
  kernel keeps moving inside a ball), diffusive (a random walk) or linear (a straight line);
- optional **measurement noise**: an independent Gaussian vector of norm ``noise`` added to each
  kernel (a relative kernel error, as float32 rounding gives); S between two noisy copies of one
  kernel is about ``noise**2``.

``CLASSES`` maps each class to the regime the verdict must return. ``truth_phase1_end`` is where
the Phase I motion's velocity falls to the Phase II process's median velocity at ``dt = 100``
(``None`` where that is not defined: no two phases, a kernel that freezes, or steps with too
few multiples of 100).

Example::

    t = trajectory("bounded", seed=0, noise=1e-3)
    v = phase_verdict(t.steps, t.S)      # v.regime == "cone"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CLASSES", "Trajectory", "default_steps", "trajectory"]

#: class -> the regime the verdict must give.
CLASSES: dict[str, str] = {
    "constant-velocity": "no-two-phase",
    "constant-diffusion": "no-two-phase",
    "frozen": "lazy",
    "freezing": "lazy",
    "bounded": "cone",
    "diffusive": "drift-after-phase-I",
    "linear": "drift-after-phase-I",
    "late-phase-I": "cone",
    "hover": "cone",
}

_DT = 100  # the spacing of the regular checkpoints and the velocity's dt


@dataclass(frozen=True)
class Trajectory:
    """One labelled trajectory.

    Attributes:
        name: the class (a key of :data:`CLASSES`); expected: the regime it must get.
        steps: ``(K,)`` int64 checkpoint steps; S: ``(K, K)`` float64 kernel distances.
        truth_phase1_end: see the module docstring; seed, noise: how it was drawn.
    """

    name: str
    expected: str
    steps: np.ndarray
    S: np.ndarray
    truth_phase1_end: int | None
    seed: int
    noise: float


def default_steps(last: int = 5000) -> np.ndarray:
    """Every 5 steps up to 100, then every 100 up to ``last``: ``(K,)`` int64."""
    return np.unique(np.concatenate([np.arange(0, 100, 5), np.arange(0, last + 1, _DT)]))


def _angle(kind: str, t: np.ndarray, last: int) -> np.ndarray:
    """Phase I's rotation angle ``phi(t)`` (radians)."""
    if kind == "late-phase-I":
        t0, tau, speed = 0.45 * last, 0.02 * last, 0.3 / _DT  # ~0.3 rad per 100 steps, then decay
        fast = np.minimum(t, t0) * speed
        return fast + speed * tau * (1.0 - np.exp(-np.maximum(t - t0, 0.0) / tau))
    if kind in ("constant-velocity",):
        return t * (0.03 / _DT)
    if kind == "constant-diffusion":
        return np.zeros_like(t)
    tau = 0.05 * last
    return 0.8 * (1.0 - np.exp(-t / tau))  # 0.8 rad in all, speed decaying with time scale tau


def _phase2(kind: str, t: np.ndarray, last: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """``(K, dims)`` the Phase II process at the steps ``t`` (exact transition laws)."""
    out = np.zeros((t.size, dims))
    if kind in ("frozen", "constant-velocity"):
        return out
    dts = np.diff(t, prepend=t[0])
    if kind == "linear":
        direction = rng.standard_normal(dims)
        direction /= np.linalg.norm(direction)
        wobble = 0.002 * rng.standard_normal((t.size, dims)) / np.sqrt(dims)
        return np.outer(t * (0.1 / last), direction) + wobble
    if kind == "bounded" or kind == "late-phase-I" or kind == "hover":
        # OU walk, stationary spread `radius` (S between independent states ~ radius**2),
        # correlation time `corr` steps.
        radius, corr = (0.085, 100.0) if kind == "hover" else (0.05, 100.0)
        sigma = radius / np.sqrt(dims)
        x = sigma * rng.standard_normal(dims)
        for k in range(t.size):
            decay = np.exp(-dts[k] / corr)
            x = x * decay + sigma * np.sqrt(1.0 - decay**2) * rng.standard_normal(dims)
            out[k] = x
        return out
    # random walks: diffusive, freezing (steps shrinking tenfold over the run), constant-diffusion
    per_step = {"diffusive": 0.014, "freezing": 0.014, "constant-diffusion": 0.05}[kind]
    scale = per_step / np.sqrt(_DT * dims)
    if kind == "freezing":
        shrink = np.exp(-np.log(10.0) * np.clip((t - 0.2 * last) / (0.8 * last), 0.0, 1.0))
    else:
        shrink = np.ones_like(t)
    steps = rng.standard_normal((t.size, dims)) * (scale * shrink * np.sqrt(dts))[:, None]
    return np.cumsum(steps, axis=0)


def _s_matrix(u: np.ndarray) -> np.ndarray:
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    s = 1.0 - u @ u.T
    np.fill_diagonal(s, 0.0)
    return np.clip((s + s.T) / 2.0, 0.0, 2.0)


def _embed(phi: np.ndarray, q: np.ndarray, dim: int) -> np.ndarray:
    u = np.zeros((phi.size, dim))
    u[:, 0], u[:, 1] = np.cos(phi), np.sin(phi)
    u[:, 2 : 2 + q.shape[1]] = q
    return u


def trajectory(
    name: str,
    *,
    seed: int = 0,
    noise: float = 0.0,
    last: int = 5000,
    phase2_dims: int = 16,
    dim: int = 64,
    steps: np.ndarray | None = None,
) -> Trajectory:
    """Draw one trajectory of class ``name`` (see :data:`CLASSES`) with its S matrix.

    ``steps`` ``(K,)``, ascending integers, replaces the checkpoint schedule
    :func:`default_steps` ``(last)`` (``last`` still sets the run's time scales). The Phase II
    processes are drawn with their exact transition laws between the given steps, so the rows
    and columns of ``S`` at a subset of them are a sample of the same trajectory at that subset:
    draw once at the union of several schedules to compare those schedules on one run.
    """
    if name not in CLASSES:
        raise ValueError(f"no trajectory class {name!r}; choose from {', '.join(CLASSES)}")
    rng = np.random.default_rng(seed)
    t = (default_steps(last) if steps is None else np.asarray(steps)).astype(np.float64)
    phi = _angle(name, t, last)
    q = _phase2(name, t, last, phase2_dims, rng)
    u = _embed(phi, q, dim)
    if noise > 0.0:
        eps = rng.standard_normal(u.shape)
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        u = u + noise * eps / np.linalg.norm(eps, axis=1, keepdims=True)
    s = _s_matrix(u)
    truth = _truth(name, t, phi, q, dim)
    return Trajectory(name, CLASSES[name], t.astype(np.int64), s, truth, seed, noise)


def _truth(name: str, t: np.ndarray, phi: np.ndarray, q: np.ndarray, dim: int) -> int | None:
    """Where Phase I's velocity at dt = 100 falls to Phase II's median velocity."""
    if CLASSES[name] in ("no-two-phase", "lazy"):
        return None
    on_grid = (t % _DT) == 0
    tg = t[on_grid]
    if tg.size < 3 or not np.any(tg[:-1] >= 0.6 * tg[-1]):
        return None  # a schedule with too few steps on the grid of dt = 100
    s1 = _s_matrix(_embed(phi[on_grid], np.zeros((tg.size, 1)), dim))
    s2 = _s_matrix(_embed(np.zeros(tg.size), q[on_grid], dim))
    v1 = np.diagonal(s1, offset=1)
    v2 = np.diagonal(s2, offset=1)
    level = float(np.median(v2[tg[:-1] >= 0.6 * tg[-1]]))
    peak = int(np.argmax(v1))
    below = np.nonzero(v1[peak:] <= level)[0]
    return int(tg[peak + below[0]]) if below.size else None
