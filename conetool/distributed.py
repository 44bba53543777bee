"""Sharing ``kernels`` and ``switch`` among the processes that torchrun starts.

``torchrun --nproc-per-node N [--nnodes M ...] -m conetool kernels CKPTS --store S`` starts N·M
processes and tells each its ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. Each process (a *rank*)
takes a disjoint, balanced share of the work units (checkpoints for ``kernels``, switch points for
``switch``; see :func:`shard`), runs it on its own device (``cuda:LOCAL_RANK`` when CUDA is there
and ``--device`` is ``auto`` or ``cuda``, else the CPU) and writes each unit's result into the
shared store atomically. Rank 0 alone writes the files that describe the whole job (the store's
``manifest.json``, ``switch/results.csv``), after every rank has finished.

Without torchrun (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) there is one rank,
no process group is started and :class:`Job` does nothing but hand the work to its only rank.

Coordination goes through the key-value store of torch.distributed's default process group
(started with gloo on the CPU, NCCL on CUDA, from the standard ``env://`` variables), never
through lock-step collectives, so ranks with unequal shares never wait on each other until the
end, and rank 0 can show the progress of the whole job while it waits. If a rank dies, torchrun
stops the others; every unit already written is complete, and a rerun (with any number of ranks)
does only what is missing.

A rank whose peer is gone never waits forever, with or without torchrun (ranks started by hand
or by ``srun``, a lost node that torchrun on the other nodes does not notice): a rank that ends
with an error tells the others at once; every rank beats a counter in the key-value store from a
background thread, and a rank waiting on a peer that has not beaten for :func:`peer_timeout`
seconds (``CONETOOL_PEER_TIMEOUT``, default 300; also how long the ranks wait for each other to
start) stops with :class:`PeerLostError`, as does a rank that loses the key-value store itself.

Every rank must call the coordinating methods of :class:`Job` (:meth:`~Job.agree`,
:meth:`~Job.broadcast`, :meth:`~Job.gather`, :meth:`~Job.settle`, :meth:`~Job.bar`) in the
same order; the library functions do.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from .device import resolve_device
from .errors import ConetoolError
from .io import said_os_error
from .progress import ProgressTask

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

T = TypeVar("T")
U = TypeVar("U", bound="SupportsRichComparison")  # a unit of work: shards come out sorted
_FIRST_POLL, _LAST_POLL = 0.005, 0.25  # seconds between looks at the key-value store
_JOBS = itertools.count()  # every rank opens its jobs in the same order: equal numbers, equal keys
PEER_TIMEOUT_VARIABLE = "CONETOOL_PEER_TIMEOUT"
_DEFAULT_PEER_TIMEOUT = 300.0  # seconds: a lost node stops the job in minutes, not gloo's 30


class PeerFailedError(ConetoolError):
    """Raised on a rank that stops because another rank failed. That rank prints its own error,
    so the command line exits 1 without repeating it."""


class PeerInterruptedError(PeerFailedError):
    """Raised on a rank that stops because another rank was interrupted (a Ctrl-C that reached
    that rank alone: ranks started by hand, or another node's torchrun). The job was interrupted,
    so the command line exits 130, as for a Ctrl-C, and rank 0 alone says so."""


class PeerLostError(ConetoolError):
    """Raised on a rank whose peer is gone without a word (killed, its node lost) or that lost
    the job's key-value store. One rank says so; the others raise :class:`PeerFailedError`."""


def peer_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a rank waits for a silent peer (and for every rank to start) before it stops:
    ``CONETOOL_PEER_TIMEOUT``, else 300."""
    env = os.environ if environ is None else environ
    raw = env.get(PEER_TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return _DEFAULT_PEER_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ConetoolError(
            f"environment variable {PEER_TIMEOUT_VARIABLE}={raw!r} is not a positive number of "
            f"seconds. Set it to e.g. 600, or unset it for the default "
            f"({_DEFAULT_PEER_TIMEOUT:.0f} s)."
        )
    return value


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in a torchrun job: ``rank`` in ``0..world_size-1`` over all nodes,
    ``local_rank`` on its node. ``Ranks()`` is a plain run (one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Ranks:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun sets them (a plain run
        when they are absent)."""
        env = os.environ if environ is None else environ
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            raw = env.get(name, "").strip()
            try:
                values[name] = int(raw) if raw else default
            except ValueError:
                raise ConetoolError(
                    f"environment variable {name}={raw!r} is not an integer. torchrun sets it; "
                    f"unset it to run conetool as a single process."
                ) from None
        ranks = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        if ranks.world_size < 1 or not 0 <= ranks.rank < ranks.world_size or ranks.local_rank < 0:
            shown = ", ".join(
                f"{name}={values[name]}" if env.get(name, "").strip() else f"{name} unset"
                for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
            )
            raise ConetoolError(
                f"environment {shown} is not a valid torchrun placement (WORLD_SIZE >= 1, "
                "0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0; unset: RANK 0, WORLD_SIZE 1, "
                "LOCAL_RANK 0). Start conetool with torchrun, or unset these variables for a "
                "single process."
            )
        return ranks

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that reports progress and writes the job's shared files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, units: Sequence[U], weights: Sequence[float] | None = None) -> list[U]:
        """This rank's share of ``units`` (see :func:`shard`)."""
        return shard(units, self.rank, self.world_size, weights=weights)

    def device(self, requested: str | torch.device | None = "auto") -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` for ``auto`` or ``cuda`` when CUDA is there
        and the job has several ranks (``cuda:0`` when the process sees one GPU only, as when the
        launcher sets ``CUDA_VISIBLE_DEVICES`` per process); otherwise as
        :func:`conetool.device.resolve_device` (``cpu``, or an explicit ``cuda:K`` for all)."""
        if not self.is_distributed or isinstance(requested, torch.device):
            return resolve_device(requested)
        name = (requested or "auto").strip().lower()
        if name in ("auto", "cuda") and torch.cuda.is_available():
            count = torch.cuda.device_count()
            if count == 1:
                return torch.device("cuda", 0)  # the launcher gave each process its own GPU
            if self.local_rank >= count:
                raise ConetoolError(
                    f"this node has {count} CUDA device(s), but torchrun started a process with "
                    f"LOCAL_RANK {self.local_rank}. Start at most one process per GPU "
                    f"(--nproc-per-node {count}), or pass --device cpu."
                )
            return torch.device("cuda", self.local_rank)
        return resolve_device(name)


def shard(
    units: Sequence[U], rank: int, world_size: int, *, weights: Sequence[float] | None = None
) -> list[U]:
    """The units of ``rank`` among ``world_size`` ranks: disjoint, together all of them, and
    balanced (share sizes differ by at most one), returned in ascending order.

    Units are sorted and dealt round-robin: unit ``i`` of the sorted list goes to rank
    ``i mod world_size``. With ``weights`` (the cost of each unit, e.g. the training steps of a
    switch point) they are dealt heaviest first in a snake order (ranks 0..W-1, then W-1..0, ...),
    which keeps the counts balanced and evens out the cost.

    Example::

        shard([0, 100, 200, 300, 400], rank=1, world_size=2)   # [100, 300]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if weights is not None and len(weights) != len(units):
        raise ValueError(f"{len(weights)} weights for {len(units)} units")
    if weights is None:
        order = sorted(range(len(units)), key=lambda i: units[i])
    else:
        order = sorted(range(len(units)), key=lambda i: (-weights[i], units[i]))
    mine = []
    for position, index in enumerate(order):
        lap, seat = divmod(position, world_size)
        if weights is not None and lap % 2:
            seat = world_size - 1 - seat
        if seat == rank:
            mine.append(units[index])
    return sorted(mine)


class SharedBar:
    """A progress bar of the whole job: every rank calls :meth:`advance` once per unit it
    finishes; rank 0's bar shows the units finished by all ranks (a counter in the key-value
    store, read whenever rank 0 advances or waits). Other ranks' bars show nothing."""

    def __init__(self, task: ProgressTask, store: Any | None, key: str, is_main: bool) -> None:
        self.task, self._store, self._key, self._is_main = task, store, key, is_main
        self._shown = 0

    def advance(self, amount: int = 1, **fields: Any) -> None:
        """Count ``amount`` units finished on this rank (``fields`` shown beside rank 0's bar)."""
        if self._store is None:
            self.task.advance(amount, **fields)
            return
        total = int(self._store.add(self._key, amount))
        if self._is_main:
            self._show(total, fields)

    def advance_here(self, amount: int = 1, **fields: Any) -> None:
        """Advance rank 0's bar for work it alone knows about (e.g. units already done), without
        counting them in the shared counter."""
        if self._is_main:
            self.task.advance(amount, **fields)

    def poll(self) -> None:
        """Bring rank 0's bar up to date with the other ranks' counts."""
        if self._store is not None and self._is_main:
            self._show(int(self._store.add(self._key, 0)), {})

    def close(self) -> None:
        self.poll()
        self.task.close()

    def _show(self, total: int, fields: dict[str, Any]) -> None:
        if total > self._shown:
            self.task.advance(total - self._shown, **fields)
            self._shown = total


class Job:
    """One library call (``kernels``, ``switch``) as seen from one rank. Open with :func:`job`."""

    def __init__(
        self,
        name: str,
        ranks: Ranks,
        device: torch.device,
        store: Any | None,
        timeout: float = _DEFAULT_PEER_TIMEOUT,
    ) -> None:
        self.name, self.ranks, self.device = name, ranks, device
        # a PrefixStore over the default group's store; None for one rank
        self._store = None if store is None else _GuardedStore(store)
        self._calls = itertools.count()
        self._deferred: ConetoolError | None = None
        self.timeout = timeout  # seconds without a heartbeat after which a peer counts as lost
        self._seen: dict[int, tuple[int, float]] = {}  # rank -> (its last beat, when it changed)

    @property
    def is_main(self) -> bool:
        return self.ranks.is_main

    @property
    def is_distributed(self) -> bool:
        return self._store is not None

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    def shard(self, units: Sequence[U], weights: Sequence[float] | None = None) -> list[U]:
        """This rank's share of ``units`` (:func:`shard`); all of them for a single process."""
        return self.ranks.shard(units, weights)

    # --------------------------------------------------------------- agreement
    def agree(self, work: Callable[[], T], *, main_first: bool = False) -> T:
        """Run ``work`` on every rank; if it raises a ConetoolError on any rank, raise on all.

        The first rank with a given message raises its error (so the command line prints each
        distinct error once); every other rank raises :class:`PeerFailedError`. With
        ``main_first`` the other ranks start ``work`` only after rank 0 finished it (rank 0
        creates what they then open). Returns this rank's result.
        """
        if not self.is_distributed:
            self._raise_deferred()
            return work()
        seq = next(self._calls)
        result: Any = None
        error: ConetoolError | None = None

        def attempt() -> None:
            nonlocal result, error
            try:
                self._raise_deferred()
                result = work()
            except ConetoolError as exc:
                error = exc

        if main_first and not self.is_main:
            first = self._wait_json(f"{seq}/agree/0", rank=0)
            if first is None:
                attempt()
        else:
            attempt()
        self._set_json(f"{seq}/agree/{self.rank}", None if error is None else str(error))
        messages = [self._wait_json(f"{seq}/agree/{r}", rank=r) for r in range(self.world_size)]
        if error is None and all(m is None for m in messages):
            return result
        if error is not None:
            if str(error) in messages[: self.rank]:
                raise PeerFailedError(str(error)) from error
            raise error
        first_rank = next(r for r, m in enumerate(messages) if m is not None)
        raise PeerFailedError(f"rank {first_rank} failed: {messages[first_rank]}")

    def same_arguments(self, arguments: Mapping[str, str | None], command: str) -> None:
        """Stop every rank if this one was started with other ``arguments`` (text keyed by
        flag, None: not given) than rank 0, as a node started by hand can be: it would compute
        another job. The ranks that differ say how."""
        if not self.is_distributed:
            return
        rank0: dict[str, str | None] = self.broadcast(dict(arguments))
        self.agree(lambda: _same_arguments(rank0, dict(arguments), command))

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (JSON data) on every rank."""
        if not self.is_distributed:
            return value
        key = f"{next(self._calls)}/broadcast"
        if self.is_main:
            self._set_json(key, value)
            return value
        return self._wait_json(key, rank=0)

    def gather(self, value: Any, *, while_waiting: Callable[[], None] | None = None) -> list[Any]:
        """Every rank's ``value`` (JSON data), in rank order, on every rank. Waits for the
        slowest rank as long as it lives (its heartbeat; no timeout on the work itself), calling
        ``while_waiting`` (e.g. :meth:`SharedBar.poll`) now and then."""
        if not self.is_distributed:
            return [value]
        seq = next(self._calls)
        self._set_json(f"{seq}/gather/{self.rank}", value)
        return [
            self._wait_json(f"{seq}/gather/{r}", while_waiting, rank=r)
            for r in range(self.world_size)
        ]

    def settle(
        self,
        value: Any,
        decide: Callable[[list[Any]], Any],
        *,
        while_waiting: Callable[[], None] | None = None,
    ) -> Any:
        """Every rank's ``value`` (JSON data) to rank 0, which calls ``decide`` with them (in
        rank order) once all are there; rank 0's decision (JSON data) on every rank. Unlike
        :meth:`gather`, each rank calls it when it is ready, at its own point of its work (once,
        between the same two other calls of every rank): a rank waits for rank 0's decision only,
        as long as rank 0 lives. ``decide`` raising on rank 0 stops every rank (rank 0 ends
        with that error, and the others stop with it)."""
        if not self.is_distributed:
            return decide([value])
        seq = next(self._calls)
        self._set_json(f"{seq}/settle/{self.rank}", value)
        if not self.is_main:
            return self._wait_json(f"{seq}/settled", while_waiting, rank=0)
        values = [
            self._wait_json(f"{seq}/settle/{r}", while_waiting, rank=r)
            for r in range(self.world_size)
        ]
        decision = decide(values)
        self._set_json(f"{seq}/settled", decision)
        return decision

    def finish(self) -> None:
        """The job ended well on this rank: rank 0 waits until every rank has said so, so that
        the key-value store it may host (ranks started without torchrun) outlives their last
        look at it."""
        if self._store is None:
            return
        self._store.set(f"finished/{self.rank}", "1")
        if self.is_main:
            for r in range(1, self.world_size):
                self._wait_json(f"finished/{r}", rank=r, raw=True)

    def bar(self, task: ProgressTask) -> SharedBar:
        """Wrap ``task`` (rank 0's bar; a silent one elsewhere) into a whole-job bar."""
        return SharedBar(task, self._store, f"{next(self._calls)}/bar", self.is_main)

    # --------------------------------------------------------------- failures
    def fail(self) -> None:
        """Tell the other ranks to stop after their current unit (this rank hit an error)."""
        if self._store is not None:
            self._store.set("failed", str(self.rank))

    def peer_failed(self) -> bool:
        """Whether a rank has called :meth:`fail` or ended with an error."""
        return self._store is not None and bool(self._store.check(["failed"]))

    def abandon(self, error: BaseException) -> None:
        """Tell the other ranks that this one ends now, without finishing (``error``): those
        waiting on it stop at once instead of waiting for its heartbeat to go quiet."""
        if self._store is None:
            return
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        # printed by this rank (an OSError as the command line words it: a full, read-only or
        # forbidden file system, naming the path); a crash or Ctrl-C not
        said = isinstance(error, ConetoolError) or (
            isinstance(error, OSError) and said_os_error(error) is not None
        )
        interrupted = isinstance(error, KeyboardInterrupt)
        try:
            if not isinstance(error, PeerInterruptedError):  # (the interrupted rank's record stays)
                record = [self.rank, reason[:500], said, interrupted]
                self._store.set("aborted", json.dumps(record))
            self._store.set("failed", str(self.rank))
        except PeerLostError:
            pass  # the store is gone too: the others find that out themselves

    def beat(self) -> None:
        """One heartbeat of this rank (a background thread calls it; see :func:`job`)."""
        if self._store is not None:
            self._store.add(f"beat/{self.rank}", 1)

    def _check_peer(self, rank: int) -> None:
        """Raise if rank ``rank``, which this rank waits on, ended without finishing or shows no
        sign of life for :attr:`timeout` seconds."""
        assert self._store is not None  # only a job of several ranks waits on peers
        if self._store.check(["aborted"]):
            who, reason, said, *interrupted = json.loads(self._store.get("aborted"))
            if interrupted and interrupted[0]:
                raise PeerInterruptedError(
                    f"rank {who} was interrupted (Ctrl-C), so every rank stopped. Everything "
                    "already written is complete and valid; rerun the same command to continue."
                )
            if said:
                raise PeerFailedError(f"rank {who} failed: {reason}")
            self._lost(f"rank {who} stopped ({reason})")
        beats = int(self._store.add(f"beat/{rank}", 0))
        now = time.monotonic()
        last = self._seen.get(rank)
        if last is None or last[0] != beats:
            self._seen[rank] = (beats, now)
        elif now - last[1] > self.timeout:
            self._lost(
                f"rank {rank} has shown no sign of life for {self.timeout:.0f} s (killed, out of "
                "memory, or its node lost) while this rank waited for it",
                silent=True,
            )

    def _lost(self, what: str, silent: bool = False) -> None:
        """Stop on a lost peer: the first rank to notice explains, the others stop quietly.
        ``silent``: the peer went quiet (rather than ending with an error)."""
        message = (
            f"{what}. Every kernel already written into the store is complete: rerun the same "
            "command (with any number of ranks) to compute only what is missing."
        )
        if silent:
            message += (
                f" If that rank is only slow, raise {PEER_TIMEOUT_VARIABLE} (seconds; now "
                f"{self.timeout:.0f})."
            )
        try:
            first = int(self._store.add("lost", 1)) == 1 if self._store is not None else True
        except PeerLostError:
            first = True
        if first:
            raise PeerLostError(message)
        raise PeerFailedError(message)

    # --------------------------------------------------------------- internals
    def _raise_deferred(self) -> None:
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error

    def _set_json(self, key: str, value: Any) -> None:
        assert self._store is not None  # only a job of several ranks exchanges values
        self._store.set(key, json.dumps(value))

    def _wait_json(
        self,
        key: str,
        while_waiting: Callable[[], None] | None = None,
        *,
        rank: int,
        raw: bool = False,
    ) -> Any:
        """The value rank ``rank`` sets at ``key``, once it is there; raises if that rank ended
        without setting it (:meth:`_check_peer`)."""
        assert self._store is not None  # only a job of several ranks exchanges values
        pause = _FIRST_POLL
        while not self._store.check([key]):
            if rank != self.rank:
                self._check_peer(rank)
            if while_waiting is not None:
                while_waiting()
            time.sleep(pause)
            pause = min(pause * 1.5, _LAST_POLL)  # quick for short waits, light for long ones
        found = self._store.get(key)
        return found if raw else json.loads(found)


def _same_arguments(
    rank0: dict[str, str | None], mine: dict[str, str | None], command: str
) -> None:
    differ = [flag for flag in mine if mine[flag] != rank0.get(flag)]
    if not differ:
        return

    def shown(value: str | None) -> str:
        return "not given" if value is None else ("given" if value == "True" else value)

    listed = "; ".join(
        f"{flag} {shown(mine[flag])} here, {shown(rank0.get(flag))} on rank 0" for flag in differ
    )
    raise ConetoolError(
        f"this rank was started with other arguments than rank 0 ({listed}). Every rank of a "
        f"torchrun job (every node) must run the same {command} command; start them again "
        "alike."
    )


class _GuardedStore:
    """The job's key-value store, whose failures (the process hosting it ended: rank 0 started
    without torchrun, or torchrun's agent on a lost node) raise :class:`PeerLostError`."""

    def __init__(self, store: Any) -> None:
        self._inner = store

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._inner, name)(*args)
        except (RuntimeError, ConnectionError) as exc:  # torch's DistError is a RuntimeError
            raise PeerLostError(
                f"lost the job's key-value store ({exc}): the process that held it "
                "ended (rank 0 when the ranks were started without torchrun, else "
                "torchrun on the first node). Every kernel already written into the store is "
                "complete: rerun the same command (with any number of ranks) to compute only "
                "what is missing."
            ) from exc

    def set(self, key: str, value: str) -> None:
        self._call("set", key, value)

    def get(self, key: str) -> bytes:
        return bytes(self._call("get", key))

    def check(self, keys: list[str]) -> bool:
        return bool(self._call("check", keys))

    def add(self, key: str, amount: int) -> int:
        return int(self._call("add", key, amount))


@contextmanager
def job(name: str, device: str | torch.device | None = "auto") -> Iterator[Job]:
    """Open a :class:`Job` for this process, from the torchrun environment.

    With several ranks this starts torch.distributed's default process group from the ``env://``
    variables (gloo on the CPU, NCCL when this rank's device is CUDA) unless the caller already
    started one, and destroys it at the end if it started it. An unusable ``device`` is reported
    by the job's first :meth:`Job.agree`, so that the ranks fail together.
    """
    import torch.distributed as dist

    deferred: ConetoolError | None = None
    if dist.is_available() and dist.is_initialized():
        ranks = Ranks(dist.get_rank(), dist.get_world_size(), Ranks.from_env().local_rank)
    else:
        ranks = Ranks.from_env()
    try:
        dev = ranks.device(device)
    except ConetoolError as exc:
        dev, deferred = torch.device("cpu"), exc
    if not ranks.is_distributed:
        single = Job(name, ranks, dev, None)
        single._deferred = deferred
        yield single
        return
    timeout = peer_timeout()
    started = False
    if not dist.is_initialized():
        _start_group(ranks, dev, timeout)
        started = True
    stop = threading.Event()
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        prefix = f"conetool/{restart}/{next(_JOBS)}/{name}"
        store = dist.PrefixStore(prefix, _get_default_store())
        shared = Job(name, ranks, dev, store, timeout)
        shared._deferred = deferred
        shared.beat()
        beating = threading.Thread(
            target=_keep_beating, args=(shared, stop, min(5.0, timeout / 5)), daemon=True
        )
        beating.start()
        try:
            yield shared
        except BaseException as exc:
            shared.abandon(exc)
            raise
        shared.finish()
    finally:
        stop.set()
        if started and dist.is_initialized():
            dist.destroy_process_group()


def _keep_beating(job: Job, stop: threading.Event, every: float) -> None:
    """The heartbeat of this rank, until the job ends (or the store is gone)."""
    while not stop.wait(every):
        try:
            job.beat()
        except ConetoolError:
            return


def _start_group(ranks: Ranks, device: torch.device, timeout: float) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        raise ConetoolError(
            f"WORLD_SIZE={ranks.world_size} asks for several processes, but this PyTorch build "
            "has no torch.distributed. Run conetool as a single process (without torchrun)."
        )
    nccl = device.type == "cuda" and dist.is_nccl_available()
    if nccl:
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            backend="nccl" if nccl else "gloo",
            rank=ranks.rank,
            world_size=ranks.world_size,
            timeout=timedelta(seconds=timeout),
        )
    except (ValueError, RuntimeError) as exc:
        if "timeout" in str(exc).lower() or "timed out" in str(exc).lower():
            raise ConetoolError(
                f"not all {ranks.world_size} ranks (WORLD_SIZE) joined within {timeout:.0f} s "
                f"({PEER_TIMEOUT_VARIABLE}): a rank did not start, or started with other "
                "MASTER_ADDR/MASTER_PORT. Start every rank alike (torchrun does), or raise "
                f"{PEER_TIMEOUT_VARIABLE} if the ranks start slowly."
            ) from exc
        raise ConetoolError(
            f"WORLD_SIZE={ranks.world_size} asks for several processes, but torch.distributed "
            f"could not start ({exc}). Start conetool with torchrun (e.g. torchrun "
            "--nproc-per-node 2 -m conetool kernels CKPTS), which sets MASTER_ADDR and "
            "MASTER_PORT, or unset WORLD_SIZE for a single process."
        ) from exc
