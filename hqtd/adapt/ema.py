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
    statistics, not with an average of them. The authors copy the buffers only at the end of each
    epoch (METHOD.md §8.5); with ``buffers_every_step=False`` :meth:`update` leaves them alone and
    the training loop calls :meth:`copy_buffers` at epoch ends.

    Attributes:
        module: the averaged copy, in eval mode, without gradients.
        decay: the averaging factor (0.999 in the paper).
        buffers_every_step: whether :meth:`update` copies the buffers too.
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.999, buffers_every_step: bool = True
    ) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.buffers_every_step = buffers_every_step

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average the parameters of ``model`` into :attr:`module` (and copy its buffers when
        :attr:`buffers_every_step`)."""
        ema_params, params = list(self.module.parameters()), list(model.parameters())
        if len(ema_params) != len(params):
            raise ValueError("the EMA copy and the model have different parameters")
        # One multi-tensor call instead of a call per tensor (hundreds for ResNet-101).
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        if self.buffers_every_step:
            self.copy_buffers(model)

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        """Copy the buffers of ``model`` (BatchNorm statistics and counters) into :attr:`module`."""
        ema_buffers, buffers = list(self.module.buffers()), list(model.buffers())
        if len(ema_buffers) != len(buffers):
            raise ValueError("the EMA copy and the model have different buffers")
        torch._foreach_copy_(ema_buffers, buffers)

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state dict (loadable into a model of the same configuration)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged weights, e.g. when resuming from a checkpoint."""
        self.module.load_state_dict(state)
