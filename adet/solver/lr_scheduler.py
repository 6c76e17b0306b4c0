"""Learning-rate schedules as pure functions of the iteration, so resuming needs only the iteration number."""

from __future__ import annotations

import bisect
import math

import torch


def warmup_factor(iteration: int, warmup_iters: int, warmup_factor: float, method: str = "linear") -> float:
    """Multiplier during warmup: linear from ``warmup_factor`` at 0 to 1 at ``warmup_iters``, or constant."""
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got '{method}'")


class WarmupLRScheduler:
    """Sets every param group's lr to ``initial_lr * schedule(iteration)``; ``step()`` advances one iteration.

    ``name`` "WarmupMultiStepLR": x gamma at each of ``steps``; "WarmupCosineLR": cosine from 1 to
    ``base_lr_end / base_lr`` over ``max_iter``. Both with warmup, as detectron2's schedules of the same names.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, max_iter: int, steps: tuple[int, ...] = (),
                 gamma: float = 0.1, warmup_iters: int = 0, warmup_factor_: float = 0.001,
                 warmup_method: str = "linear", end_factor: float = 0.0):
        if name not in ("WarmupMultiStepLR", "WarmupCosineLR"):
            raise ValueError(f"SOLVER.LR_SCHEDULER_NAME must be 'WarmupMultiStepLR' or 'WarmupCosineLR', got "
                             f"'{name}'")
        if list(steps) != sorted(steps):
            raise ValueError(f"SOLVER.STEPS must be increasing, got {list(steps)}")
        self.optimizer = optimizer
        self.name, self.max_iter, self.steps, self.gamma = name, max_iter, list(steps), gamma
        self.warmup_iters, self.warmup_factor, self.warmup_method = warmup_iters, warmup_factor_, warmup_method
        self.end_factor = end_factor
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.iteration = 0
        self._apply()

    def multiplier(self, iteration: int) -> float:
        factor = warmup_factor(iteration, self.warmup_iters, self.warmup_factor, self.warmup_method)
        if self.name == "WarmupMultiStepLR":
            return factor * self.gamma ** bisect.bisect_right(self.steps, iteration)
        progress = min(iteration / max(self.max_iter, 1), 1.0)
        return factor * (self.end_factor + (1 - self.end_factor) * 0.5 * (1 + math.cos(math.pi * progress)))

    def _apply(self) -> None:
        factor = self.multiplier(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self._apply()
