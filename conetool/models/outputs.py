"""A user model whose forward returns its logits inside an object (Hugging Face style): a dict
with a ``"logits"`` entry, a ``transformers`` ``ModelOutput``, a dataclass with a ``.logits``
field. conetool's engine, training loop and linearized model need the ``(batch, num_classes)``
logits tensor itself, so such a model gets a forward that returns it, without a wrapping module
(which would put a prefix before every state-dict name, and the run's checkpoints would no
longer fit).

Example::

    model = logits_returned(factory(num_classes=10), (1, 8, 8))
    model(x)  # (batch, 10) logits, where factory's model returned {"logits": ..., ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..model_inputs import check_batch
from ..ntk_buffers import called_on_copies

__all__ = ["logits_in", "logits_returned"]

#: Marks a class :func:`logits_returned` made, so that a model is never given the forward twice.
_MARK = "_conetool_logits_of"


def logits_in(out: object) -> torch.Tensor | None:
    """The logits tensor in a forward pass's output ``out``: ``out["logits"]`` of a mapping (a
    dict, a Hugging Face ``ModelOutput``), else ``out.logits`` of another object (a dataclass);
    ``None`` when ``out`` is a tensor itself or holds no tensor there."""
    if isinstance(out, torch.Tensor):
        return None
    if isinstance(out, Mapping):
        found = out.get("logits")
    else:
        found = getattr(out, "logits", None)
    return found if isinstance(found, torch.Tensor) else None


def logits_returned(
    model: nn.Module, input_shape: tuple[int, ...], examples: torch.Tensor | None = None
) -> nn.Module:
    """``model`` itself, made to return its logits tensor when its forward returns them inside an
    object (see :func:`logits_in`); any other model is returned unchanged.

    Runs one batch of 2 standard-normal examples of ``input_shape`` (a private generator; the
    global random state, the training flag, BatchNorm statistics and any state the forward pass
    updates are left as found; eval mode, no gradients, copies of the buffers and tensor
    attributes: :func:`conetool.ntk_buffers.called_on_copies`) to see what forward returns; of 2 of ``examples``, the data set's inputs, when
    they are token ids (:func:`conetool.model_inputs.check_batch`). A forward that fails is left to
    :func:`~conetool.models.output_check` to report. The model keeps its parameters, buffers,
    names and hooks: its class is replaced by a subclass of the same name whose ``forward``
    returns ``logits_in(<the class's forward>(...))``, so ``state_dict`` keys, ``isinstance``
    and ``copy.deepcopy`` are as before.
    """
    cls = type(model)
    if getattr(cls, _MARK, False):
        return model
    x = check_batch(model, input_shape, examples)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            out = called_on_copies(model, x)
    except Exception:
        return model  # output_check runs it again and says what is wrong
    finally:
        model.train(was_training)
    if logits_in(out) is None:
        return model
    model.__class__ = _returning_logits(cls)
    return model


#: One subclass per class, so that every model a factory builds has the same class.
_MADE: dict[type[nn.Module], type[nn.Module]] = {}


def _returning_logits(cls: type[nn.Module]) -> type[nn.Module]:
    if cls in _MADE:
        return _MADE[cls]
    original = cls.forward

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        found = logits_in(out)
        return out if found is None else found

    namespace = {
        "forward": forward,
        _MARK: True,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    maker: Any = type(cls)  # the class's metaclass: type, or one of the user's
    made: type[nn.Module] = maker(cls.__name__, (cls,), namespace)
    _MADE[cls] = made
    return made
