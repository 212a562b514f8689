"""Multitask losses: per-task cross-entropy combined three ways.

- ``random_weighted`` (COVID-MTL eq. 4-6): in every training iteration draw ``n`` weight
  vectors from a symmetric Dirichlet(alpha = 1) over the K tasks, average them, and weight
  the task losses with the average: L = sum_k w_k L_k, w = (1/n) sum_j w^(j), w^(j) ~ Dir(alpha).
  Weights sum to 1; larger n concentrates them around 1/K. In evaluation the expected
  weights (1/K each) are used, so test losses are comparable between epochs.
- ``uncertainty`` (Kendall, Gal and Cipolla, CVPR 2018): learnable s_k = log sigma_k^2,
  L = mean_k [exp(-s_k) L_k + s_k / 2] (classification form; mean over tasks as the
  authors' code).
- ``mean``: the plain mean of the task losses.

Dirichlet draws use torch's default CPU generator, so ``torch.manual_seed`` fixes them.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOSS_TYPES = ("random_weighted", "uncertainty", "mean")


def dirichlet_weights(n_tasks: int, n_draws: int = 2, alpha: float = 1.0) -> torch.Tensor:
    """Average of ``n_draws`` Dirichlet(alpha, ..., alpha) vectors (COVID-MTL eq. 4-5)."""
    if n_tasks < 1 or n_draws < 1:
        raise ValueError("n_tasks and n_draws must be >= 1")
    if n_tasks == 1:
        return torch.ones(1)
    dist = torch.distributions.Dirichlet(torch.full((n_tasks,), float(alpha), dtype=torch.float64))
    return dist.sample((n_draws,)).mean(dim=0).float()


class MultiTaskLoss(nn.Module):
    """Combines per-task cross-entropy losses; ``forward`` returns (total, {task: loss})."""

    def __init__(self, tasks: Sequence[str], kind: str = "random_weighted", n_draws: int = 2,
                 alpha: float = 1.0) -> None:
        super().__init__()
        if kind not in LOSS_TYPES:
            raise ValueError(f"unknown loss type {kind!r}; choose from {LOSS_TYPES}")
        self.tasks = list(tasks)
        self.kind = kind
        self.n_draws = int(n_draws)
        self.alpha = float(alpha)
        if kind == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))
        else:
            self.register_parameter("log_vars", None)
        self.last_weights: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, kind={self.kind}, n_draws={self.n_draws}, alpha={self.alpha}"

    def task_losses(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Cross-entropy in float32 even under autocast (stable log-softmax).
        return {t: F.cross_entropy(logits[t].float(), targets[t].long()) for t in self.tasks}

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        k = losses.numel()
        if self.kind == "random_weighted":
            if self.training:
                w = dirichlet_weights(k, self.n_draws, self.alpha)
            else:
                w = torch.full((k,), 1.0 / k)
            w = w.to(losses.device, losses.dtype)
            self.last_weights = w.detach().cpu()
            return (w * losses).sum()
        if self.kind == "uncertainty":
            s = self.log_vars.to(losses.device, losses.dtype)
            self.last_weights = torch.exp(-s).detach().cpu()
            return (torch.exp(-s) * losses + 0.5 * s).mean()
        self.last_weights = torch.full((k,), 1.0 / k)
        return losses.mean()

    def forward(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_task = self.task_losses(logits, targets)
        total = self.combine(torch.stack([per_task[t] for t in self.tasks]))
        return total, per_task
