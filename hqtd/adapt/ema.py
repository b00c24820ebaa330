"""The EMA copy of the weights kept during adaptation (METHOD.md §3.2, §4 step 11)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """Exponential moving average of a model's parameters.

    After each optimiser step, :meth:`update` sets every parameter to
    ``decay·ema + (1 − decay)·student`` and *copies* every buffer (BatchNorm running statistics and
    counters), as the authors' EMA does: the averaged weights are normalised with the student's
    current statistics, not with an average of them.

    Attributes:
        module: the averaged copy, in eval mode, without gradients.
        decay: the averaging factor (0.999 in the paper).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average the parameters of ``model`` into :attr:`module` and copy its buffers."""
        for ema_param, param in zip(self.module.parameters(), model.parameters(), strict=True):
            ema_param.lerp_(param.detach(), 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state dict (loadable into a model of the same configuration)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged weights, e.g. when resuming from a checkpoint."""
        self.module.load_state_dict(state)
