"""The cascade: a pruned student and teaching assistants that share one set of conv weights.

Model ``i`` keeps a fraction ``keeps[i]`` of the channels (increasing, the last one usually
1.0). Every copy has its own first conv, BatchNorm layers, classifier and channel scores; all
other conv and linear weights are one tensor, so training any model trains them all. The
frozen original teaches the largest model and each model teaches the next smaller one.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mhkd import losses
from mhkd.prune.groups import ModelLayout, PruneError
from mhkd.prune.masks import MaskedNet, check_keep
from mhkd.taps import Taps


def cascade_keeps(keep: float, assistants: int) -> list[float]:
    """Keep fractions of the student and ``assistants`` TAs, evenly spaced up to 1.0."""
    keep = check_keep(keep)
    if assistants < 0:
        raise PruneError(f"the number of assistants must be 0 or more, got {assistants}")
    if assistants == 0:
        return [keep]
    # the last is exactly 1.0: 0.2 + 0.8 * 3 / 3 is 1.0000000000000002 in floating point
    return [keep + (1.0 - keep) * i / assistants for i in range(assistants)] + [1.0]


def cascade_loss(
    logits: Sequence[Tensor],
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 15.0,
) -> dict[str, Tensor]:
    """Summed over models: ``CE(z_i, y)`` and ``KD(z_i ← z_{i+1})`` with ``z_N`` the teacher.

    Each target is detached: a model is taught by the next larger one, not the reverse.
    """
    pairs = zip(logits, [*logits[1:], teacher_logits], strict=True)
    return {
        "ce": sum(F.cross_entropy(z.float(), labels) for z in logits),
        "kd": sum(losses.kd(z, t.detach(), temperature) for z, t in pairs),
    }


def hint_loss(features: Sequence[dict[str, Tensor]], teacher: dict[str, Tensor]) -> Tensor:
    """Summed over models and layers: mean squared error to the next larger model's feature."""
    targets = [*features[1:], teacher]
    return sum(
        F.mse_loss(f[name].float(), t[name].detach().float())
        for f, t in zip(features, targets, strict=True)
        for name in f
    )


def cascade_score_grads(grads: Sequence[Tensor | None]) -> list[Tensor | None]:
    """Model ``i`` takes the score gradient of model ``i + 1``; the largest keeps its own.

    The larger model sees channels the smaller one has dropped, so its gradient can bring a
    dropped channel back.
    """
    return [*grads[1:], grads[-1]]


def _tie(net: nn.Module, owner: nn.Module, names: Sequence[str]) -> None:
    for name in names:
        module, source = net.get_submodule(name), owner.get_submodule(name)
        module.weight = source.weight
        if module.bias is not None:
            module.bias = source.bias


class Cascade(nn.Module):
    """``len(keeps)`` masked copies of ``model`` with shared conv weights; model 0 is the student.

    ``hint_layers`` (optional) are tapped on every copy and on the teacher for hint losses.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: ModelLayout,
        keeps: Sequence[float],
        scores: Sequence[Tensor],
        hint_layers: Sequence[str] = (),
    ):
        super().__init__()
        nets = [copy.deepcopy(model) for _ in keeps]
        for net in nets[:-1]:
            _tie(net, nets[-1], layout.shared)
        self.keeps = [float(k) for k in keeps]
        self.models = nn.ModuleList(
            MaskedNet(net, layout.groups, k, scores) for net, k in zip(nets, keeps, strict=True)
        )
        self._taps = [Taps(net, hint_layers) for net in nets]

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        return [model(x) for model in self.models]

    def hint_features(self) -> list[dict[str, Tensor]]:
        return [taps.pop() for taps in self._taps]

    def close_taps(self) -> None:
        for taps in self._taps:
            taps.close()
        self._taps = []

    def score_parameters(self) -> list[nn.Parameter]:
        return [p for model in self.models for p in model.scores]

    def weight_parameters(self) -> list[nn.Parameter]:
        scores = {id(p) for p in self.score_parameters()}
        return [p for p in self.parameters() if id(p) not in scores]

    def cascade_score_grads(self) -> None:
        """Replace each model's score gradients by the next larger model's."""
        per_model = [list(model.scores) for model in self.models]
        for group in range(len(per_model[0])):
            grads = cascade_score_grads([scores[group].grad for scores in per_model])
            for scores, grad in zip(per_model, grads, strict=True):
                scores[group].grad = None if grad is None else grad.clone()
