"""AdamW stepped after the backward pass (with clipping by the global norm), or inside it.

Inside backward is PyTorch's recipe "How to save memory by fusing the optimizer step into the
backward pass" (torchtune calls it ``optimizer_in_bwd``): each parameter is updated as soon as its
gradient is complete and that gradient is freed at once, so the gradient of the whole model
(4 bytes per parameter in fp32, 540 MB for a 135M model) is never held. The price: no clipping
by the global norm, which needs every gradient first, and no accumulation over micro-batches.
The global norm is still measured, for the logs.

Both keep one ``lead`` optimizer for the learning-rate scheduler to drive.
"""

from __future__ import annotations

import functools
import math

import torch


def _adamw(params, lr: float) -> torch.optim.AdamW:
    # fused: one kernel per step, no temporary copies of every parameter (foreach makes several)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)


class StepAfterBackward:
    """Plain AdamW: gradients of the whole step are clipped to ``max_grad_norm`` (0: no clipping)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, max_grad_norm: float):
        self.params, self.max_grad_norm = params, max_grad_norm
        self.lead = _adamw(params, lr)

    def step(self) -> float:
        """Apply the accumulated gradients; return their global norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm or math.inf)
        self.lead.step()
        self.lead.zero_grad(set_to_none=True)
        return float(norm)

    def state_dict(self) -> dict:
        return self.lead.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.lead.load_state_dict(state)

    def close(self) -> None:
        pass


class StepInBackward:
    """One AdamW per parameter, stepped by a post-accumulate-grad hook during backward."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float):
        self.optimizers = [_adamw([p], lr) for p in params]
        self.lead = self.optimizers[0]
        # summed on the parameters' device: a .cpu() per parameter would wait for the GPU each time
        self._squared_norm = torch.zeros((), dtype=torch.float64, device=params[0].device)
        self._hooks = [param.register_post_accumulate_grad_hook(functools.partial(self._apply, optimizer))
                       for param, optimizer in zip(params, self.optimizers, strict=True)]

    def _apply(self, optimizer: torch.optim.AdamW, param: torch.Tensor) -> None:
        squared = torch.linalg.vector_norm(param.grad.detach()).double() ** 2
        self._squared_norm += squared.to(self._squared_norm.device)  # a no-op unless the model spans devices
        optimizer.param_groups[0]["lr"] = self.lead.param_groups[0]["lr"]  # the scheduler moves the lead's
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step(self) -> float:
        """The updates already happened in backward; return the global norm they had."""
        norm = float(self._squared_norm.sqrt())  # the step's one wait for the device
        self._squared_norm.zero_()
        return norm

    def state_dict(self) -> dict:
        return {"per_parameter": [o.state_dict() for o in self.optimizers]}

    def close(self) -> None:
        """Detach the hooks, so a later backward through the model updates nothing."""
        for hook in self._hooks:
            hook.remove()

    def load_state_dict(self, state: dict) -> None:
        for optimizer, saved in zip(self.optimizers, state["per_parameter"], strict=True):
            optimizer.load_state_dict(saved)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, max_grad_norm: float, in_backward: bool):
    return StepInBackward(params, lr) if in_backward else StepAfterBackward(params, lr, max_grad_norm)
