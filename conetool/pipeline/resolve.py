"""Finding a run's spec and building what it describes, shared by the commands."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .. import paths
from ..checkpoints._training_state_given import refuse_training_state
from ..choices import path_argument
from ..data import describe_data
from ..errors import ModelError, SpecError, StoreError
from ..models import BUILTIN_MODELS, build_model
from ..spec import Spec, check_model_classes, default_arch_note, load_spec
from ..step_names import IterationsPerEpoch


def resolve_spec(ckpts: Path, spec: Spec | str | Path | None) -> Spec:
    """``spec`` when given, else ``CKPTS/conetool.toml``; a message saying what to write if neither."""
    if isinstance(spec, Spec):
        return spec
    if spec is not None:
        return load_spec(spec)
    found = paths.spec(ckpts)
    if found.is_file():
        return load_spec(found)
    refuse_training_state(ckpts)  # the file's fault first: a --spec would not make it readable
    if Path(ckpts).is_file() and Path(ckpts).suffix.lower() == ".toml":  # a spec, not weights
        raise SpecError(
            f"{ckpts} is a TOML file, a spec, not a checkpoint: pass it as --spec {ckpts}, and "
            "as the checkpoints the run's checkpoint directory (the --out of conetool train, or "
            "the folder holding the checkpoint files)."
        )
    if Path(ckpts).is_file():  # one checkpoint file: no conetool.toml of its own
        raise SpecError(
            f"{ckpts} is a file, and no --spec was given: the spec is the {paths.SPEC_NAME} of "
            f"a run's directory. Pass the directory ({Path(ckpts).parent}; --steps FIRST:LAST "
            "selects checkpoints), or --spec SPEC.toml with the file."
        )
    runs = (
        sorted(p.parent for p in Path(ckpts).glob(f"*/{paths.SPEC_NAME}")) if ckpts.is_dir() else []
    )
    if runs:
        shown = ", ".join(f"'{r}'" for r in runs[:3]) + (" ..." if len(runs) > 3 else "")
        raise SpecError(
            f"{ckpts} has no {paths.SPEC_NAME} and no --spec was given, but its "
            f"{'subfolders' if len(runs) > 1 else 'subfolder'} {shown} "
            f"{'hold runs' if len(runs) > 1 else 'holds a run'} of `conetool train` (with "
            f"{paths.SPEC_NAME}): checkpoints in subfolders are not read, so pass the run's own "
            f"folder, such as '{runs[0]}'."
        )
    raise SpecError(
        f"{ckpts} has no {paths.SPEC_NAME} and no --spec was given, so conetool cannot rebuild "
        "the model. Pass --spec SPEC.toml, or save one as "
        f"{found} with at least:\n"
        '  [model]\n  arch = "resnet20"        # or "package.module:factory"\n'
        '  num_classes = 10\n  [data]\n  dataset = "cifar10"\n  root = "~/data"\n'
        "(the README's 'The spec' section lists every key)."
    )


def moved_run(ckpts: str | Path | None) -> Path | None:
    """The checkpoint directory given for a run moved since ``conetool kernels`` (``--ckpts``
    of the analysis commands, overriding the store's manifest), checked to be a directory;
    ``None`` when none was given."""
    if ckpts is None:
        return None
    ckpts = path_argument(ckpts, "--ckpts", "the run's checkpoint directory")
    if not ckpts.is_dir():
        raise StoreError(
            f"--ckpts {ckpts} is not a directory. Pass the run's checkpoint directory."
        )
    return ckpts


def iterations_per_epoch(spec: Spec) -> IterationsPerEpoch:
    """open_lth's iterations per epoch, ceil(n_train / batch_size), for ``model_epE_itI`` names
    (and ``epoch_3``), keeping the numbers it came from for the listing's note."""
    examples = describe_data(spec.data, source=spec.source).n_train
    written = spec.written is None or "train.batch_size" in spec.written
    return IterationsPerEpoch(examples, spec.train.batch_size, written)


def model_for(spec: Spec) -> nn.Module:
    """The spec's architecture (freshly initialized; checkpoints are loaded into it)."""
    info = describe_data(spec.data, source=spec.source)
    check_model_classes(spec, info.num_classes, builtin_model=spec.model.arch in BUILTIN_MODELS)
    try:
        return build_model(spec.model, info.input_shape, source=spec.source, examples=info.examples)
    except ModelError as exc:
        if note := default_arch_note(spec):
            raise type(exc)(f"{exc} {note}") from exc
        raise
