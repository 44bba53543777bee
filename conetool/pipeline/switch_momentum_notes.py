"""What a switch sweep says of its points' momentum: each point's reason (why it starts at zero,
or the hyperparameters its saved state was saved with: :class:`MomentumNote`), said once per
reason, before the first point it applies to trains, and kept as one message for all the points
it applies to, across torchrun ranks (:class:`MomentumSaid`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..progress import Said


@dataclass(frozen=True)
class MomentumNote:
    """What the point ``at`` says of its momentum: why it starts at zero, or the hyperparameters
    its saved state was saved with. ``one`` names the point's own files; ``many`` says the same
    of any number of points and names none of their files, so that the points it applies to
    share one message (:func:`momentum_notes`). ``warning``: it is said as a warning (an
    optimizer state the run saved is not used, or the saved hyperparameters are not the
    spec's: a loss, or a recipe to check), else as a note (no state saved: information)."""

    at: int
    one: str
    many: str
    warning: bool = False


def momentum_notes(said: list[MomentumNote]) -> list[str]:
    """One message per distinct reason, in the order of the first point it applies to: ``t=400:
    ONE`` for one point, ``t=0, 100, 200 (3 points): MANY`` for several (a sweep of 20 points
    over a run without optimizer state said it 20 times, each naming its files)."""
    return [message for _, message in _by_reason(said)]


def _by_reason(said: list[MomentumNote]) -> list[tuple[str, str]]:
    """``(reason, message)`` for each distinct reason (``MomentumNote.many``) of ``said``, the
    message as :func:`momentum_notes` gives it."""
    groups: dict[str, list[MomentumNote]] = {}
    for note in sorted(said, key=lambda n: n.at):
        groups.setdefault(note.many, []).append(note)
    out = []
    for many, notes in groups.items():
        if len(notes) == 1:
            out.append((many, f"t={notes[0].at}: {notes[0].one}"))
            continue
        steps = [str(n.at) for n in notes]
        if len(steps) > _LISTED:
            steps = [*steps[: _LISTED - 2], "...", steps[-1]]
        out.append((many, f"t={', '.join(steps)} ({len(notes)} points): {many}"))
    return out


#: The most switch points a shared momentum note lists by step (then: the first ones, ..., last).
_LISTED = 8


class MomentumSaid:
    """What a sweep's points say of their momentum, through ``says``, each reason once: as soon as
    it is known on this rank, before its point trains (that point's message, ``t=400: ONE``: the
    table's momentum column then shows every point's), and once the job's points are all known
    (:meth:`close`) one message per reason for all the points it applies to
    (:func:`momentum_notes`), which ``says`` keeps in place of the first (the result's record,
    and what ``--quiet`` prints at the end of the warnings) but says only for a reason this rank
    did not say (one that only points of other ranks met).

    Call it with each point's :class:`MomentumNote`; ``points`` holds this rank's."""

    def __init__(self, says: Said) -> None:
        self.says = says
        self.points: list[MomentumNote] = []
        self._first: dict[str, str] = {}  # reason (MomentumNote.many) -> what was said of it

    def __call__(self, note: MomentumNote) -> None:
        self.points.append(note)
        if note.many not in self._first:
            self._first[note.many] = message = momentum_notes([note])[0]
            (self.says.warn if note.warning else self.says.note)(message)

    def withdraw(self) -> None:
        """Take the messages said as they came out of ``says``' lists (before they are shared
        with the other ranks: :meth:`close` puts the job's in their place)."""
        said = set(self._first.values())
        self.says.warnings = [m for m in self.says.warnings if m not in said]
        self.says.notes = [m for m in self.says.notes if m not in said]

    def close(self, job: list[MomentumNote]) -> None:
        """One message per reason for the ``job``'s points (every rank's), warnings apart: kept,
        and said only where this rank said nothing of its reason as it came."""
        for warning, say, kept in (
            (False, self.says.note, self.says.notes),
            (True, self.says.warn, self.says.warnings),
        ):
            for reason, message in _by_reason([m for m in job if m.warning == warning]):
                if reason in self._first:
                    kept.append(message)
                else:
                    say(message)
