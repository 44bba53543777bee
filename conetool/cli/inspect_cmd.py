"""``conetool inspect CKPTS``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from .app import INTERRUPT_ADVICE, Debug, Quiet, app, console, handle_errors
from .options import Every, SpecOpt, StepRegex, Steps, ckpts_argument
from .runtime import starting
from .table_output import print_table

if TYPE_CHECKING:
    from rich.console import JustifyMethod

    from ..checkpoints import InspectRow


@app.command()
def inspect(
    ckpts: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint directory (or one checkpoint).",
            metavar="CKPTS",
            parser=ckpts_argument("inspect"),
        ),
    ],
    spec: SpecOpt = None,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Load every tensor: check finiteness and shapes too."),
    ] = False,
    step_regex: StepRegex = None,
    steps: Steps = None,
    every: Every = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """List the checkpoints of a directory and say what is wrong with any of them.

    Reads file headers only (fast on thousands of safetensors files; of a torch.save file, its
    pickle with the tensors memory-mapped) unless --verify. With a spec (--spec, or
    CKPTS/conetool.toml) keys and shapes are checked against the model. Exits 1 when any
    checkpoint is unusable. What to check is said in 'warning:' lines, what is information only
    in 'note:' lines, which --quiet leaves out.

    Example: conetool inspect runs/digits --verify
    """
    starting("inspect", quiet)
    from ..checkpoints.discover import summarize_problems
    from ..pipeline import inspect as inspect_run
    from ..units import format_bytes

    # As kernels says them: warnings (what to check), then notes (information; not with -q).
    directory_warnings: list[str] = []
    directory_notes: list[str] = []
    with handle_errors(debug):
        rows = inspect_run(
            ckpts,
            spec=spec,
            verify=verify,
            step_regex=step_regex,
            steps=steps,
            every=every,
            warn=directory_warnings.append,
            note=directory_notes.append,
        )
    table = Table(title=f"conetool inspect {ckpts}", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("step", "right"),
        ("file", "left"),
        ("size", "right"),
        ("elements", "right"),
        ("status", "left"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for row in rows:
        status = "[green]ok[/]" if row.status == "ok" else "[bold red]error[/]"
        table.add_row(
            "?" if row.step is None else str(row.step),
            row.file,
            "-" if row.size < 0 else format_bytes(row.size),
            "?" if row.num_params is None else f"{row.num_params:,}",
            status,
        )
    print_table(console, table)
    # each once, on its own line; a row's note naming the files it is about
    warnings = _row_warnings(ckpts, rows) + directory_warnings
    notes = [] if quiet else _row_notes(rows) + directory_notes
    for channel, messages in (("warning", warnings), ("note", notes)):
        for message in messages:
            console.print(f"{channel}: {message}", highlight=False, markup=False)
    bad = [row for row in rows if row.status != "ok"]
    # Identical problems of many files (61 epoch_N.pt without a spec) make one line.
    problems = [(ckpts.expanduser() / row.file, row.problem or "") for row in bad]
    for line in summarize_problems(problems):
        console.print(f"- {line}", highlight=False, markup=False, soft_wrap=True)
    ok = len(rows) - len(bad)
    checked = "headers and tensors" if verify else "headers"
    console.print(f"{ok} of {len(rows)} checkpoints usable ({checked} checked).", highlight=False)
    # every line printed: a Ctrl-C as inspect exits cuts short nothing (INTERRUPT_DONE's "the
    # printing of its results was cut short" holds only until here)
    INTERRUPT_ADVICE[:] = [printed_advice(len(bad))]
    if bad:
        raise typer.Exit(1)


def printed_advice(unusable: int) -> str:
    """What ``interrupted.`` is followed by once inspect has printed its listing in full, as it
    exits (1 when ``unusable`` checkpoints are, else 0): nothing is lost, and the exit status is
    the interrupt's (130), not the one the listing would have given."""
    status = "1 for the unusable checkpoints listed" if unusable else "0"
    return (
        "The command had finished: every checkpoint was read and its listing printed in full "
        f"(inspect writes nothing); nothing is lost and nothing to rerun (it exits 130, not "
        f"{status})."
    )


def _row_notes(rows: list[InspectRow]) -> list[str]:
    """Each distinct note of the rows once, naming the files it is about: ``ckpt_5.pt is a
    torch.save file, read only ...`` for one, ``3 checkpoints (ckpt_0.pt, ckpt_5.pt,
    ckpt_10.pt) are torch.save files, read only ...`` for several (the row's own note, "a
    torch.save file, ...", said once for all of them read as if of one file), as kernels' listing
    says it. Rows with a problem are left out: they are not usable checkpoints, and their
    problem is listed below."""
    from ..checkpoints.discover import TORCH_NOTE, named_files, torch_note

    files: dict[str, list[str]] = {}
    for row in rows:
        if row.status != "ok":
            continue
        for note in row.notes:  # (the file inside a folder: step_0/model.pt)
            files.setdefault(note, []).append(row.weights_file or row.file)
    return [
        torch_note(names) if note == TORCH_NOTE else f"{named_files(names)}: {note}"
        for note, names in sorted(files.items())
    ]


def _row_warnings(ckpts: Path, rows: list[InspectRow]) -> list[str]:
    """The rows' warnings, each once: one that names no file (steps from epoch names) as it is;
    those that name their row's file (tensors of lower precision than the model's, under its
    smallest normal number) as the problems are listed, the same warning of three or more files
    in one line naming them (``44 files (step_0.safetensors, ...): each file stores ...``), not
    one line per file."""
    from ..checkpoints.discover import summarize_problems

    shared: set[str] = set()
    per_file: list[tuple[Path, str]] = []
    for row in rows:
        where = ckpts.expanduser() / row.file
        for said in row.warnings:
            if str(where) in said:
                per_file.append((where, said))
            else:
                shared.add(said)
    return sorted(shared) + summarize_problems(per_file)
