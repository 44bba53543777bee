"""The training step a checkpoint's name gives: built-in name rules and ``--step-regex``.

Names that give a step directly: ``step_2000``, ``step=2000``, ``epoch=3-step=2000`` (Lightning:
the step wins over the epoch), ``global_step2000``, ``ckpt-2000``, ``checkpoint-2000``,
``model_2000``, ``weights-2000``, ``iter_2000``, a bare ``2000``.

Names that give an epoch, converted with the iterations (optimizer steps) per epoch, which the
spec gives as ceil(training examples / batch size):

- open_lth's ``model_ep3_it17``: step = 3 x iterations per epoch + 17;
- ``epoch_3``, ``epoch=3``, ``epoch-3``, ``epoch3``, ``model_epoch_3``, ``ep3``, ``ep_3``:
  step = 3 x iterations per epoch, the weights after 3 whole epochs (``epoch_0`` is the
  initialization). A loop that counts epochs from 0 *after* the first epoch gives steps one epoch
  early; distances and the verdict compare kernels, so only their step axis shifts (``switch``
  trains from the wrong step of the schedule, and warns where an Adam state's step count tells).

Without the iterations per epoch (no spec), an epoch name is an error that says what to give.

A number that reads as a date and time is no step: a loop that names its files by when they were
saved (``ckpt_20261201101400.pt``, ``model-20261201-101400.safetensors``, ``ckpt-2026-12-01.pt``)
would otherwise give steps such as 20261201101400, ordered by time but meaningless as a step axis
(the distances per step, the velocities, ``--every`` and ``--at``). Such a name is an error naming
the file and the fixes: store the step in the file (read before the name), or pass
``--step-regex`` if the number really is the step. A date is YYYYMMDD of a real calendar day in the
years 2000-2099, alone (8 digits) or followed by hhmm or hhmmss (12, 14 digits, or a second number
of 4 or 6 digits after a separator), or YYYY-MM-DD; 8-digit steps that happen to be such a day
(20,051,200, say) are refused too, and ``--step-regex`` takes them.

A number that reads as a Unix time (``ckpt_1764584040.pt``, ``model-1764584040.safetensors``:
seconds since 1970, the files named by when they were saved) is taken for the step all the same,
as a long run may count that many steps; but when every step read from a name by the rules above
lies in :data:`UNIX_TIMES` (2001-09-09 to the end of 2039), or every one in
:data:`UNIX_MILLISECONDS` or :data:`UNIX_MICROSECONDS` (the same times in milliseconds or
microseconds), the listing warns, naming the fixes
(:func:`conetool.checkpoints.discover.unix_time_warning`; files that store their step,
``--step-regex`` and Hugging Face ``checkpoint-N`` folders are not counted). The same times in
nanoseconds (:data:`UNIX_NANOSECONDS`) are beyond the largest step taken: such a name is an error
that says it reads as a Unix time in nanoseconds, with the same fixes.

``--step-regex`` is searched in the file name (the folder name for Hugging Face folders):

- a group named ``step`` (or, failing that, the first group) is the step: ``'it(\\d+)'``,
  ``'_(?P<step>\\d+)\\.pt'``;
- a group named ``epoch`` (with an optional group ``it``, the iteration within the epoch) is
  converted as above: ``'epoch_(?P<epoch>\\d+)'``, ``'ep(?P<epoch>\\d+)_it(?P<it>\\d+)'``.

A regex whose only, unnamed group follows the word ``epoch`` or ``ep`` (``'epoch_(\\d+)'``) is
refused: taking epochs for steps would silently shrink the step axis. Name the group ``epoch``
(or ``step`` if the numbers really are steps).
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

from conetool.errors import CheckpointError

STEP_REGEX_EXAMPLE = "--step-regex 'it(\\d+)'"
EPOCH_REGEX_EXAMPLE = "--step-regex 'epoch_(?P<epoch>\\d+)'"

_OPEN_LTH = re.compile(r"^model_ep(\d+)_it(\d+)$")
_NAME_RULES = (
    re.compile(r"(?:^|[^a-z0-9])(?:global_)?step[_=\-]?(\d+)(?![0-9])", re.IGNORECASE),
    re.compile(r"(?:^|[^a-z0-9])(?:ckpt|checkpoint)[_=\-]?(\d+)(?![0-9])", re.IGNORECASE),
    re.compile(r"(?:^|[^a-z0-9])(?:model|weights|iter|iteration)[_=\-]?(\d+)(?![0-9])", re.I),
    re.compile(r"^(\d+)$"),
)
_EPOCH_RULE = re.compile(r"(?:^|[^a-z0-9])(?:epoch|ep)[_=\-]?(\d+)(?![0-9])", re.IGNORECASE)
# The text of a regex just before its first group, when that reads as an epoch label.
# "epoch" or "ep" as a word of its own ("step_", "sweep", "rep-" are not), then separators.
_EPOCH_BEFORE_GROUP = re.compile(r"(?<![a-z])(?:epoch|ep)[^a-z0-9(]*$", re.IGNORECASE)


def epoch_error(path: Path, *, open_lth: bool = False) -> CheckpointError:
    """The error for a name that gives an epoch when the iterations per epoch are unknown (the
    same text for every file but the path, so that a directory of them reads as one line)."""
    if open_lth:
        what = (
            "is named the open_lth way (model_epE_itI: epoch E, iteration I within it), and its "
            "step (E x iterations per epoch + I)"
        )
    else:
        what = "is named by epoch, and its step (epoch x iterations per epoch)"
    return CheckpointError(
        f"'{path}' {what} needs the iterations per epoch: give a spec (--spec, or conetool.toml "
        f"in the checkpoint directory) with [data] and [train] batch_size, so that conetool "
        f"computes ceil(training examples / batch size), or pass --step-regex with a group "
        f"named 'step' if the name holds the step."
    )


def _date_time(name: str, number: re.Match[str]) -> str | None:
    """The form of date and time (``"YYYYMMDDhhmmss"``, ``"YYYYMMDD-hhmmss"``, ``"YYYY-MM-DD"``)
    that the number a name rule read in ``name`` (its group 1) is, or None when it is no date:
    YYYYMMDD a calendar day of 2000-2099, alone or with a time of day (hhmm or hhmmss) joined to
    it or after one separator; or a year followed by -MM-DD."""
    digits, rest = number.group(1), name[number.end(1) :]
    if len(digits) == 4:
        joined = _DASHED_DATE.match(rest)
        if joined is None or not _is_day(digits + joined.group(2) + joined.group(3)):
            return None
        sep = joined.group(1)
        return f"YYYY{sep}MM{sep}DD"
    if len(digits) not in (8, 12, 14) or not _is_day(digits[:8]):
        return None
    clock = digits[8:]
    if clock:
        return f"YYYYMMDD{_CLOCKS[len(clock)]}" if _is_time(clock) else None
    after = _TIME_AFTER.match(rest)
    if after is not None and _is_time(after.group(2)):
        return f"YYYYMMDD{after.group(1)}{_CLOCKS[len(after.group(2))]}"
    return "YYYYMMDD"


_CLOCKS = {4: "hhmm", 6: "hhmmss"}
_DASHED_DATE = re.compile(r"([-_.])(\d{2})\1(\d{2})(?![0-9])")
_TIME_AFTER = re.compile(r"([-_.T])(\d{4}|\d{6})(?![0-9])")


def _is_day(digits: str) -> bool:
    """Whether 8 digits are YYYYMMDD, a calendar day of 2000-2099."""
    year, month, day = int(digits[:4]), int(digits[4:6]), int(digits[6:8])
    if not 2000 <= year <= 2099:
        return False
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


def _is_time(digits: str) -> bool:
    """Whether 4 or 6 digits are hhmm or hhmmss, a time of day."""
    parts = [int(digits[i : i + 2]) for i in range(0, len(digits), 2)]
    return parts[0] < 24 and all(p < 60 for p in parts[1:])


def date_error(path: Path, form: str) -> CheckpointError:
    """The error for a name whose number is a date and time (the same text for every file of a
    directory named alike but the path, so that they read as one line). ``--step-regex`` is
    offered only where the date is one number (``YYYYMMDDhhmmss``): a regex reading one part of a
    date in several (``YYYY-MM-DD``) would read the year."""
    regex = (
        f"; or, if the number really is the step, pass {name_regex(path.name)}"
        if form in ("YYYYMMDD", "YYYYMMDDhhmm", "YYYYMMDDhhmmss")
        else "; or name the files by their step (ckpt_2000.pt)"
    )
    return CheckpointError(
        f"'{path}' is named by a date and time ({form}), not by a training step: its number would "
        f"be taken for the step, ordering the checkpoints by time on a meaningless step axis. "
        f"Store the step in the file (a stored step wins over the name): a torch.save dict's "
        f"entry ({{'model_state_dict': ..., 'step': 2000}}) or safetensors metadata "
        f"(metadata={{'step': '2000'}}){regex}."
    )


#: The steps that read as Unix times (seconds since 1970-01-01 UTC): 10 digits from
#: 1,000,000,000 (2001-09-09 01:46:40) to the last second of 2039.
UNIX_TIMES = range(1_000_000_000, 2_208_988_800)
#: The same times in milliseconds (``int(time.time() * 1000)``, JavaScript's ``Date.now()``):
#: 13 digits.
UNIX_MILLISECONDS = range(1_000_000_000_000, 2_208_988_800_000)
#: The same times in microseconds (``int(time.time() * 1e6)``, ``datetime.timestamp()`` scaled):
#: 16 digits.
UNIX_MICROSECONDS = range(10**15, 2_208_988_800 * 10**6)
#: The same times in nanoseconds (``time.time_ns()``): 19 digits, beyond the largest step taken
#: (2**53), so such a name gives no step; its error says what the number is.
UNIX_NANOSECONDS = range(10**18, 2_208_988_800 * 10**9)
#: Each unit a name may count a Unix time in: (unit, per second, the times of 2001-2039).
UNIX_TIME_UNITS = (
    ("seconds", 1, UNIX_TIMES),
    ("milliseconds", 10**3, UNIX_MILLISECONDS),
    ("microseconds", 10**6, UNIX_MICROSECONDS),
    ("nanoseconds", 10**9, UNIX_NANOSECONDS),
)


def unix_time_unit(steps: list[int]) -> tuple[str, int] | None:
    """``(unit, per second)`` of :data:`UNIX_TIME_UNITS` when every one of ``steps`` (at least
    one) is a Unix time of 2001-2039 in that unit; else None."""
    for unit, per_second, times in UNIX_TIME_UNITS:
        if steps and all(step in times for step in steps):
            return unit, per_second
    return None


#: What to do about steps read from names that are Unix times: said by the warning of
#: :func:`conetool.checkpoints.discover.unix_time_warning` and the error of a nanosecond name.
UNIX_TIME_FIX = (
    "store the step in each file, which is read before the name: a 'step' entry of the "
    "torch.save dict ({'model_state_dict': ..., 'step': 2000}) or safetensors metadata "
    "(metadata={'step': '2000'}); or pass --step-regex with a group around the step, if the "
    "name holds it too."
)


def unix_time_text(step: int, unit: str, per_second: int) -> str:
    """``"seconds since 1970: 1764584040 is 2025-12-01 10:14:00 UTC"``: what ``step`` is as a
    Unix time in ``unit``."""
    when = datetime.datetime.fromtimestamp(step // per_second, tz=datetime.timezone.utc)
    return f"{unit} since 1970: {step} is {when:%Y-%m-%d %H:%M:%S} UTC"


class IterationsPerEpoch(int):
    """The iterations per epoch, ceil(``examples`` / ``batch_size``), an ``int`` that also keeps
    how the spec gave it, for :func:`epoch_note` to show: ``examples`` (the training split's
    size), ``batch_size`` and ``batch_written`` (False: the spec file leaves ``train.batch_size``
    to conetool's default, which a loader of one's own rarely shares)."""

    examples: int
    batch_size: int
    batch_written: bool

    def __new__(cls, examples: int, batch_size: int, batch_written: bool) -> IterationsPerEpoch:
        made = super().__new__(cls, -(-examples // batch_size))
        made.examples, made.batch_size, made.batch_written = examples, batch_size, batch_written
        return made

    def __reduce__(self) -> tuple[type[IterationsPerEpoch], tuple[int, int, bool]]:
        return IterationsPerEpoch, (self.examples, self.batch_size, self.batch_written)


def epoch_note(iterations_per_epoch: int, count: int) -> str:
    """What the listing says when steps came from epoch names (the numbers the spec gave them
    from, when ``iterations_per_epoch`` is an :class:`IterationsPerEpoch`)."""
    how = "ceil(training examples / batch size)"
    if isinstance(iterations_per_epoch, IterationsPerEpoch):
        unwritten = (
            ", which the spec file does not write: conetool's default; set it to your loader's"
            if not iterations_per_epoch.batch_written
            else ""
        )
        how = (
            f"ceil({iterations_per_epoch.examples} training examples / train.batch_size "
            f"{iterations_per_epoch.batch_size}{unwritten})"
        )
    return (
        f"{count} checkpoint(s) are named by epoch: step = epoch x {iterations_per_epoch} "
        f"iterations per epoch (from the spec: {how}), the weights after that many whole epochs."
    )


_REGEX_SPECIALS = frozenset(".^$*+?{}[]\\|()")


def _literal(text: str) -> str:
    """``text`` as a regex that matches it (``re.escape`` would also escape ``-``)."""
    return "".join("\\" + ch if ch in _REGEX_SPECIALS else ch for ch in text)


def name_regex(name: str) -> str:
    """A ``--step-regex`` that reads the step from names like ``name`` (a file or folder name):
    the text just before the number its name rule reads, then a group. ``ckpt_1.pt`` ->
    ``--step-regex 'ckpt_(\\d+)'``, ``epoch=3-step=2000.ckpt`` -> ``'-step=(\\d+)'``,
    ``epoch_3.pt`` -> ``'epoch_(?P<epoch>\\d+)'``, ``run_a_40.pt`` -> ``'run_a_(\\d+)'``; the
    generic :data:`STEP_REGEX_EXAMPLE` for a name without a number."""
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    if _OPEN_LTH.match(stem):
        return "--step-regex 'ep(?P<epoch>\\d+)_it(?P<it>\\d+)'"
    found = next((m for rule in _NAME_RULES if (m := rule.search(stem))), None)
    group = "(\\d+)"
    if found is None and (found := _EPOCH_RULE.search(stem)) is not None:
        group = "(?P<epoch>\\d+)"
    numbers = list(re.finditer(r"\d+", stem))
    if found is None and not numbers:
        return STEP_REGEX_EXAMPLE
    start = found.start(1) if found is not None else numbers[-1].start()
    label = re.search(r"[^0-9]*$", stem[:start])
    before = label.group(0) if label else ""
    if "'" in before:
        return STEP_REGEX_EXAMPLE
    return f"--step-regex '{_literal(before) if before else '^'}{group}'"


def compile_step_regex(step_regex: str | None) -> re.Pattern[str] | None:
    """``--step-regex`` compiled and checked; None when not given."""
    if step_regex is None:
        return None
    if not isinstance(step_regex, str):
        compiled = (
            " (for a compiled pattern, pass its .pattern)"
            if isinstance(step_regex, re.Pattern)
            else ""
        )
        raise CheckpointError(
            f"--step-regex {step_regex!r} is not a regular expression: pass it as a str, such as "
            f"{STEP_REGEX_EXAMPLE}{compiled}."
        )
    try:
        pattern = re.compile(step_regex)
    except re.error as e:
        raise CheckpointError(
            f"--step-regex '{step_regex}' is not a valid regular expression ({e}); write one with "
            f"a group around the step digits, such as {STEP_REGEX_EXAMPLE}."
        ) from None
    named = pattern.groupindex
    if not pattern.groups or ("it" in named and "epoch" not in named):
        raise CheckpointError(
            f"--step-regex '{step_regex}' needs a capturing group around the step digits, such as "
            f"{STEP_REGEX_EXAMPLE} (or a group named 'epoch', and optionally one named 'it', for "
            f"epoch x iterations per epoch + it)."
        )
    if "step" not in named and "epoch" not in named:
        before = step_regex[: _first_group(step_regex)]
        if _EPOCH_BEFORE_GROUP.search(re.sub(r"\\[A-Za-z]", " ", before)):  # \b, \d: not letters
            raise CheckpointError(
                f"--step-regex '{step_regex}': its group follows '{before}', so it reads an "
                f"epoch, and taking epochs for steps would shrink the step axis. Name the group "
                f"'epoch' to convert epochs to steps with the spec ({EPOCH_REGEX_EXAMPLE}), or "
                f"'step' if the numbers really are steps ('...(?P<step>\\d+)')."
            )
    return pattern


def _first_group(regex: str) -> int:
    """The index of the first capturing group's '(' in ``regex`` (not escaped, not ``(?:``)."""
    i = 0
    while i < len(regex):
        ch = regex[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "(" and (not regex.startswith("(?", i) or regex.startswith("(?P<", i)):
            return i
        i += 1
    return len(regex)


def is_open_lth_name(name: str) -> bool:
    """Whether ``name`` (without suffix) is open_lth's ``model_ep3_it17``."""
    return _OPEN_LTH.match(name) is not None


def name_step(
    name: str, ipe: int | None, where: Path, *, dates: bool = True
) -> tuple[int | None, int | None]:
    """``(step, epoch)`` from a name without suffix: ``epoch`` is set when the step was converted
    from an epoch name; ``(None, None)`` when the name gives nothing. Raises
    :class:`CheckpointError` for an epoch name without ``ipe`` and (with ``dates``; a Hugging
    Face ``checkpoint-N`` folder is named by the Trainer, by step) for a name whose number is a
    date and time (:func:`date_error`)."""
    m = _OPEN_LTH.match(name)
    if m:
        epoch, it = int(m.group(1)), int(m.group(2))
        if ipe is None:
            raise epoch_error(where, open_lth=True)
        return epoch * ipe + it, None  # open_lth's names are expected: no note
    for rule in _NAME_RULES:
        m = rule.search(name)
        if m:
            if dates and (form := _date_time(name, m)) is not None:
                raise date_error(where, form)
            return int(m.group(1)), None
    m = _EPOCH_RULE.search(name)
    if m:
        epoch = int(m.group(1))
        if ipe is None:
            raise epoch_error(where)
        return epoch * ipe, epoch
    return None, None


def regex_step(
    pattern: re.Pattern[str], name: str, ipe: int | None, where: Path
) -> tuple[int, int | None]:
    """``(step, epoch)`` from ``--step-regex`` searched in ``name`` (``epoch`` as in
    :func:`name_step`). Raises :class:`CheckpointError` naming the flag, the file and the fix
    when it does not match, when it matches but its group takes no part in the match (captured
    no number: ``'ckpt_(\\d+)|final'`` on ``final.pt``), and when its group holds other text."""
    m = pattern.search(name)
    if m is None:
        raise CheckpointError(
            f"--step-regex '{pattern.pattern}' does not match the name of '{where}' (it is "
            f"searched in the file name, or the folder name of a checkpoint-N folder); change the "
            f"regex, or move the file out of the directory."
        )
    group = next((g for g in ("epoch", "step") if g in pattern.groupindex), None)
    if m.group(group or 1) is None:
        raise _captured_no_number(pattern, m, name, where, group)
    try:
        if "epoch" in pattern.groupindex:
            epoch = int(m.group("epoch"))
            it = int(m.group("it") or 0) if "it" in pattern.groupindex else 0
            if ipe is None:
                raise epoch_error(where, open_lth="it" in pattern.groupindex)
            return epoch * ipe + it, None if "it" in pattern.groupindex else epoch
        value = m.group("step") if "step" in pattern.groupindex else m.group(1)
        return int(value), None
    except ValueError:
        raise CheckpointError(
            f"--step-regex '{pattern.pattern}' matched '{name}' ({where}) but its group is not a "
            f"whole number; put the group around the digits only, as in {STEP_REGEX_EXAMPLE}."
        ) from None


def _captured_no_number(
    pattern: re.Pattern[str], m: re.Match[str], name: str, where: Path, group: str | None
) -> CheckpointError:
    """The error for ``--step-regex`` matching ``name`` without its step group taking part (an
    alternative without it, ``'ckpt_(\\d+)|final'`` on ``final.pt``, or an optional group): no
    number was captured, so no step."""
    which = f"its group '{group}'" if group else "its group"
    return CheckpointError(
        f"--step-regex '{pattern.pattern}' matched '{name}' ({where}) but captured no number: "
        f"{which} took no part in the match ('{m.group(0)}'). Make every match capture the "
        f"step's digits, with a group around them in each alternative, as in "
        f"{STEP_REGEX_EXAMPLE}, and let the regex not match a name that holds no step."
    )
