"""Gradient-step cost of the batched ensemble against members trained one after another.

Upstream dynamics-ensembles-rl trains each member as its own network, one after another. This
measures one gradient step (Gaussian NLL with soft log-variance bounds, Adam) of a 7-member
probabilistic ensemble, HalfCheetah-sized (17 obs + 6 act in, 17 delta + 1 reward out), batch
256, both ways, plus the machine's fp32 matmul peak in the same run, and prints ratios.

FLOPs count the matmuls only: forward 2*B*W and backward 4*B*W per member, W the number of
weights (the first layer's input gradient is not needed, so this slightly overcounts).

    .venv/bin/python benchmarks/ensemble.py [--device auto] [--threads N] [--steps 100]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ombrl.models.ensemble import DynamicsEnsemble

OBS, ACT, OUT, MEMBERS, BATCH = 17, 6, 18, 7, 256


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], None], device: torch.device, steps: int) -> float:
    """Median of 5 timings of `steps` calls each, after `steps // 5 + 2` warm-up calls."""
    for _ in range(steps // 5 + 2):
        fn()
    sync(device)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        times.append((time.perf_counter() - start) / steps)
    return sorted(times)[2]


def matmul_peak(device: torch.device) -> float:
    """fp32 GFLOP/s of a large square matmul (TF32 left off, as in training)."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = seconds_per_call(lambda: torch.mm(a, b), device, 20)
    return 2 * n**3 / seconds / 1e9


def batched_step(hidden: list[int], device: torch.device) -> Callable[[], None]:
    model = DynamicsEnsemble(OBS, ACT, hidden, MEMBERS, True, "swish", True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(MEMBERS, BATCH, OBS + ACT, device=device)
    y = torch.randn(MEMBERS, BATCH, OUT, device=device)

    def step() -> None:
        loss, _, _ = model.loss(x, y, 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()

    return step


class Member(nn.Module):
    """One upstream-style member: an nn.Sequential MLP with its own log-variance bounds."""

    def __init__(self, hidden: list[int]) -> None:
        super().__init__()
        widths = [OBS + ACT, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 2 * OUT))
        self.max_logvar = nn.Parameter(torch.full((OUT,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((OUT,), -10.0))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.net(x).split(OUT, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        nll = ((mean - y).square() * torch.exp(-logvar) + logvar).mean()
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())


def loop_step(hidden: list[int], device: torch.device) -> Callable[[], None]:
    """One gradient step of every member, each its own network and optimiser."""
    members = [Member(hidden).to(device) for _ in range(MEMBERS)]
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in members]
    x = torch.randn(MEMBERS, BATCH, OBS + ACT, device=device)
    y = torch.randn(MEMBERS, BATCH, OUT, device=device)

    def step() -> None:
        for i, (member, optimizer) in enumerate(zip(members, optimizers, strict=True)):
            loss = member.loss(x[i], y[i])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return step


def step_gflop(hidden: list[int]) -> float:
    widths = [OBS + ACT, *hidden, 2 * OUT]
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    return 6 * BATCH * weights * MEMBERS / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--steps", type=int, default=100, help="steps per timing")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.manual_seed(0)

    peak = matmul_peak(device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"fp32 matmul peak: {peak:.0f} GFLOP/s")
    print(
        f"{'ensemble':<14}{'batched ms':>11}{'loop ms':>9}{'speedup':>9}"
        f"{'batched GF/s':>14}{'loop GF/s':>11}{'batched/peak':>14}"
    )
    for hidden in ([200] * 4, [512] * 4):
        ours = seconds_per_call(batched_step(hidden, device), device, args.steps)
        loop = seconds_per_call(loop_step(hidden, device), device, args.steps)
        flops = step_gflop(hidden)
        name = f"7 x {len(hidden)}x{hidden[0]}"
        print(
            f"{name:<14}{ours * 1e3:>11.2f}{loop * 1e3:>9.2f}{loop / ours:>8.2f}x"
            f"{flops / ours:>14.0f}{flops / loop:>11.0f}{flops / ours / peak:>13.0%}"
        )


if __name__ == "__main__":
    main()
