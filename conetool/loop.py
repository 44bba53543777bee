"""The training loop of the spec's recipe, shared by ``conetool train`` and ``conetool switch``.

Everything about global step s is a function of (spec, s): the learning rate (the schedule at s),
the batch (the epoch's permutation seeded by (seed, epoch)), the augmentation and any other
randomness (seeded by (seed, s)). So a run resumed at s, and a linearized model trained from s,
see exactly the batches the standard run saw from s on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .attention import composite_attention
from .data import DataBundle, Split, augment_generator, batch_indices, steps_per_epoch
from .errors import ConetoolError
from .model_inputs import model_batch
from .optim import learning_rate, set_learning_rate
from .progress import Progress
from .spec import Spec

Row = dict[str, float]


class TrainingLoop:
    """Train ``model`` with ``optimizer`` on the spec's batches from global step ``start`` to
    ``until``, evaluating on the test split every ``eval_every`` steps and at ``until``.

    ``on_step`` callbacks run at the start of each step s (before its update) and once at
    ``until``, with the model holding the weights after s updates; ``on_eval`` receives each
    metrics row (step, epoch, lr, train_loss, train_acc, test_loss, test_acc; the train numbers
    averaged over the steps since the previous row).

    A non-finite loss at step s stops the run with a :class:`~conetool.errors.ConetoolError`:
    ``diverged(s, loss)`` when given, else "<description> diverged at step s ...", advice to
    lower ``train.lr`` or add warmup, and ``diverged_hint``.
    """

    def __init__(
        self,
        spec: Spec,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: DataBundle,
        device: torch.device,
        progress: Progress,
        *,
        description: str = "train",
        on_step: Sequence[Callable[[int], None]] = (),
        on_eval: Callable[[Row], None] | None = None,
        diverged_hint: str = "",
        diverged: Callable[[int, float], str] | None = None,
    ) -> None:
        self.spec, self.model, self.optimizer, self.data = spec, model, optimizer, data
        self.device, self.progress, self.description = device, progress, description
        self.on_step, self.on_eval, self.diverged_hint = list(on_step), on_eval, diverged_hint
        self.diverged = diverged
        self.per_epoch = steps_per_epoch(
            len(data.train), spec.train.batch_size, spec_file=spec.source
        )
        self.rows: list[Row] = []
        self._loss_sum, self._correct, self._seen = 0.0, 0, 0

    def run(self, start: int, until: int) -> list[Row]:
        """Steps ``start .. until - 1``; returns the metrics rows."""
        bar = self.progress.task(self.description, total=until)
        bar.advance(start)
        for step in range(start, until):
            self._at(step, until)
            loss = self.update(step)
            bar.advance(1, step=step + 1, loss=f"{loss:.4f}")
        self._at(until, until)
        bar.close()
        return self.rows

    def _at(self, step: int, until: int) -> None:
        for callback in self.on_step:
            callback(step)
        if step % self.spec.train.eval_every == 0 or step == until:
            self.evaluate(step)

    def train_sums(self) -> tuple[float, int, int]:
        """What the next metrics row averages: the training loss summed over examples, the
        correct predictions and the examples seen since the previous row."""
        return self._loss_sum, self._correct, self._seen

    def resume_train_sums(self, loss_sum: float, correct: int, seen: int) -> None:
        """Continue from the :meth:`train_sums` a run saved at the step it resumes from, so that
        its next row averages over every step since the previous row, as an uninterrupted run's."""
        self._loss_sum, self._correct, self._seen = loss_sum, correct, seen

    def update(self, step: int) -> float:
        """One optimizer step on the batch of global ``step``; returns the batch loss."""
        t = self.spec.train
        self.model.train()
        set_learning_rate(self.optimizer, learning_rate(t, step))
        index = batch_indices(len(self.data.train), t.batch_size, t.seed, step)
        x, y = self.data.train.batch(index)
        if t.augment and self.data.augment is not None:
            x = self.data.augment(x, augment_generator(t.seed, step))
        x, y = model_batch(self.model, x, self.device), y.to(self.device)
        torch.manual_seed(step_seed(t.seed, step))  # dropout and any other randomness of step s
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y, label_smoothing=t.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            if self.diverged is not None:
                raise ConetoolError(self.diverged(step, value))
            where = "the spec" if self.spec.source == "<spec>" else self.spec.source
            raise ConetoolError(
                f"{self.description} diverged at step {step}: the loss is {value}. Lower "
                f"train.lr (now {self.spec.train.lr!r}) or add train.warmup_steps in "
                f"{where}.{self.diverged_hint}"
            )
        self._loss_sum += value * len(y)
        self._correct += int((logits.argmax(1) == y).sum())
        self._seen += len(y)
        return value

    def evaluate(self, step: int) -> None:
        test_loss, test_acc = evaluate(
            self.model, self.data.test, self.device, self.spec.train.eval_batch_size
        )
        seen = self._seen
        row = {
            "step": step,
            "epoch": step / self.per_epoch,
            "lr": learning_rate(self.spec.train, step),
            "train_loss": self._loss_sum / seen if seen else math.nan,
            "train_acc": self._correct / seen if seen else math.nan,
            "test_loss": test_loss,
            "test_acc": test_acc,
        }
        self._loss_sum, self._correct, self._seen = 0.0, 0, 0
        self.rows.append(row)
        if self.on_eval is not None:
            self.on_eval(row)
        self.progress.log(
            f"{self.description} step {step}: test loss {test_loss:.4f}, "
            f"test accuracy {test_acc:.4f}"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, device: torch.device, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` (in eval mode) on a whole split.

    Attention runs by its composite formula (:func:`conetool.attention.composite_attention`), as
    in training, the kernels and the linearized model: PyTorch's eval-mode fast path of
    ``nn.TransformerEncoder`` with a padding mask, taken without gradients, gives padded positions
    zeros where the formula gives values, another function for a model that pools over them."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    with composite_attention():
        for begin in range(0, len(split), batch_size):
            index = torch.arange(begin, min(begin + batch_size, len(split)))
            x, y = split.batch(index)
            x, y = model_batch(model, x, device), y.to(device)
            logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return loss_sum / len(split), correct / len(split)


def step_seed(seed: int, step: int) -> int:
    """The torch seed set before the update of global ``step``."""
    return (seed * 2_654_435_761 + step * 40_503 + 17) % (2**63)
