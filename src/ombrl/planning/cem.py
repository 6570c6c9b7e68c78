"""Action-sequence optimisers for model-predictive control: CEM and random shooting.

Both minimise a batched cost over action sequences `P x H x A` inside box bounds, as upstream
handful-of-trials' `CEMOptimizer` and `RandomOptimizer` do, in torch and with one
`torch.Generator` for every random number (same seed, same plan).

CEM (upstream): starting from a mean and a variance, each iteration samples `popsize`
sequences from a normal truncated at two standard deviations, with each dimension's variance
capped at `min(var, (distance to the nearer bound / 2)^2)`, so every sample lies inside the
bounds; the `num_elites` cheapest are refitted to a mean and a variance, which are smoothed
into the previous ones with weight `alpha` on the old value. It stops after `max_iters`
iterations or once the largest variance is at most `epsilon`, and returns the mean (not the
best sample).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Cost of action sequences: P x H x A -> P (lower is better).
CostFn = Callable[[Tensor], Tensor]


def truncated_normal(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Standard normal samples truncated to [-2, 2] (upstream's `truncnorm(-2, 2)`)."""
    out = torch.empty(shape)
    return torch.nn.init.trunc_normal_(out, 0.0, 1.0, -2.0, 2.0, generator=generator)


class CEMOptimizer:
    """The cross-entropy method over action sequences (upstream handful-of-trials).

    Args:
        popsize: candidate sequences sampled per iteration.
        num_elites: cheapest candidates refitted each iteration (<= popsize).
        max_iters: largest number of iterations.
        alpha: weight of the previous mean and variance when smoothing (0: no smoothing).
        epsilon: stop once every dimension's variance is at most this.
        lower: A lower action bounds.
        upper: A upper action bounds.
        generator: source of every sample.
    """

    def __init__(
        self,
        popsize: int,
        num_elites: int,
        max_iters: int,
        alpha: float,
        epsilon: float,
        lower: Tensor,
        upper: Tensor,
        generator: torch.Generator,
    ) -> None:
        self.popsize, self.num_elites, self.max_iters = popsize, num_elites, max_iters
        self.alpha, self.epsilon = alpha, epsilon
        self.lower, self.upper = lower.float(), upper.float()
        self.generator = generator

    def optimize(self, cost_fn: CostFn, mean: Tensor, var: Tensor) -> Tensor:
        """Minimise `cost_fn` from the Gaussian (mean, var).

        Args:
            cost_fn: `P x H x A -> P` costs (lower is better).
            mean: H x A initial mean (e.g. the previous plan shifted by one step).
            var: H x A initial variance (upstream: `(upper - lower)^2 / 16`).

        Returns:
            The final mean, H x A, inside the bounds.
        """
        mean, var = mean.clone(), var.clone()
        for _ in range(self.max_iters):
            if float(var.max()) <= self.epsilon:
                break
            to_bound = torch.minimum(mean - self.lower, self.upper - mean)
            capped = torch.minimum((to_bound / 2).square(), var)
            noise = truncated_normal((self.popsize, *mean.shape), self.generator)
            samples = (mean + noise * capped.sqrt()).clamp_(self.lower, self.upper)
            costs = cost_fn(samples)
            elites = samples[torch.argsort(costs)[: self.num_elites]]
            mean = self.alpha * mean + (1 - self.alpha) * elites.mean(dim=0)
            var = self.alpha * var + (1 - self.alpha) * elites.var(dim=0, correction=0)
        return mean


class RandomOptimizer:
    """Random shooting: the cheapest of `popsize` sequences drawn uniformly inside the bounds.

    Args:
        popsize: candidate sequences.
        lower: A lower action bounds.
        upper: A upper action bounds.
        generator: source of every sample.
    """

    def __init__(
        self, popsize: int, lower: Tensor, upper: Tensor, generator: torch.Generator
    ) -> None:
        self.popsize = popsize
        self.lower, self.upper = lower.float(), upper.float()
        self.generator = generator

    def optimize(self, cost_fn: CostFn, mean: Tensor, var: Tensor) -> Tensor:
        """The cheapest uniform sample, H x A (`mean` gives the shape; `var` is unused)."""
        u = torch.rand((self.popsize, *mean.shape), generator=self.generator)
        samples = self.lower + u * (self.upper - self.lower)
        return samples[torch.argmin(cost_fn(samples))]
