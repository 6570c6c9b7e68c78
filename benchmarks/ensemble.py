"""Gradient-step cost of the batched ensemble against members trained one after another.

Upstream dynamics-ensembles-rl trains each member as its own network, one after another. This
times one gradient step of a 7-member probabilistic ensemble, HalfCheetah-sized (17 obs + 6 act
in, 17 delta + 1 reward out), batch 256 per member, both ways on the same minibatch:

- ours: `ombrl.models.fit.train_step`, the very step `fit_ensemble` takes (Gaussian NLL, soft
  log-variance bound term, PETS per-layer weight decay, one backward, fused Adam);
- compiled: the same step with the loss `torch.compile`d (the ensemble config's `compile: true`);
- baseline: the same loss and Adam, but every member its own `nn.Sequential` with its own
  optimiser, stepped one after another (upstream style).

It also measures the machine's fp32 matmul peak (a 1024^2 matmul on CPU, 4096^2 on CUDA) and
prints both ratios: speedup over the baseline (target >= 1.5x at 4x200) and our share of the
peak (target >= 50% at 4x512). FLOPs count the matmuls only: forward 2*B*W and backward 4*B*W
per member, W the number of weights (the first layer's input gradient is not needed, so this
slightly overcounts). The four are timed interleaved: 5 rounds, each timing ours, compiled, the
baseline and the peak matmul for about `--seconds` each; the medians are printed. The run
takes about a minute on an idle 2-core CPU, compilation included. The load average is printed
because other processes lower every number; interleaving keeps the ratios fairer than the
absolute values.

With `--accuracy DATA` (an HDF5 dataset, e.g. 50,000 Hopper-v5 transitions of `ombrl collect
--policy random`) it then fits 7 x 4x200 probabilistic members on it for `--epochs` epochs,
once per batch order and initialisation, with the settings upstream dynamics-ensembles-rl used
(`config/ensembles/pnn.yaml`'s lr 5e-4, batch 256 and ExponentialLR 0.995; mean-absolute-
deviation normalisation, PETS weight decays, 20% held out by whole episodes), each member
keeping its last epoch, and prints seconds per epoch beside the held-out accuracy of the
result (normalised space): the members' mean MSE, the ensemble mean's MSE, NLL per dimension
and calibration (mean z^2, 1 when calibrated). Each fit is minutes on one thread.

    .venv/bin/python benchmarks/ensemble.py [--device auto] [--threads N] [--seconds 0.4]
        [--accuracy DATA.hdf5 --epochs 30]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ombrl.config import build, load_ensemble_config
from ombrl.data.d4rl import load_dataset
from ombrl.models.ensemble import INITS, LOGVAR_BOUND_COEF, DynamicsEnsemble
from ombrl.models.fit import BATCH_ORDERS, FitConfig, fit_ensemble, train_step

OBS, ACT, OUT, MEMBERS, BATCH = 17, 6, 18, 7, 256
# PETS per-layer weight decay for 4 hidden layers + the output layer.
WEIGHT_DECAY = [2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def calls_per_repeat(fn: Callable[[], None], device: torch.device, seconds: float) -> int:
    """How many calls of `fn` take about `seconds` (at least 2), measured after one warm-up."""
    fn()
    sync(device)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 2 or calls < 2:
        fn()
        calls += 1
    sync(device)
    return max(2, round(calls * seconds / (time.perf_counter() - start)))


def interleaved_seconds(
    fns: dict[str, Callable[[], None]], device: torch.device, seconds: float, repeats: int = 5
) -> dict[str, float]:
    """Median seconds per call of each function over `repeats` rounds, each round timing every
    function once for about `seconds`. Interleaving makes every function see the same share of
    a machine that other processes load unevenly, so the ratios stay fair."""
    counts = {name: calls_per_repeat(fn, device, seconds) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(counts[name]):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / counts[name])
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def matmul(device: torch.device) -> tuple[Callable[[], None], float]:
    """A large square fp32 matmul (TF32 left off, as in training) and its GFLOP."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def call() -> None:
        torch.mm(a, b)

    return call, 2 * n**3 / 1e9


def minibatch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One normalised minibatch per member: inputs E x B x in, targets E x B x out."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(MEMBERS, BATCH, OBS + ACT, generator=g)
    y = torch.randn(MEMBERS, BATCH, OUT, generator=g)
    return x.to(device), y.to(device)


def batched_step(hidden: list[int], device: torch.device, compile: bool) -> Callable[[], None]:
    """ombrl's training step: every member in one network, one optimiser; with `compile`, the
    loss `torch.compile`d as `compile: true` does (compiled here, before timing)."""
    torch.manual_seed(0)
    model = DynamicsEnsemble(OBS, ACT, hidden, MEMBERS, True, "swish", True).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    decay = model.decay_coefficients(WEIGHT_DECAY)
    x, y = minibatch(device)
    loss_fn = torch.compile(model.loss) if compile else model.loss

    def step() -> None:
        train_step(model, optimizer, x, y, decay, None, loss_fn)

    step()

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
        self.linears = [m for m in self.net if isinstance(m, nn.Linear)]
        self.max_logvar = nn.Parameter(torch.full((OUT,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((OUT,), -10.0))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The same loss as `DynamicsEnsemble.loss` for one member."""
        mean, logvar = self.net(x).split(OUT, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        nll = ((mean - y).square() * torch.exp(-logvar) + logvar).mean()
        loss = nll + LOGVAR_BOUND_COEF * (self.max_logvar.sum() - self.min_logvar.sum())
        for coef, layer in zip(WEIGHT_DECAY, self.linears, strict=True):
            loss = loss + 0.5 * coef * layer.weight.square().sum()
        return loss


def loop_step(hidden: list[int], device: torch.device) -> Callable[[], None]:
    """One gradient step of every member, each its own network and optimiser."""
    torch.manual_seed(0)
    members = [Member(hidden).to(device) for _ in range(MEMBERS)]
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in members]
    x, y = minibatch(device)

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


def accuracy(data: str, epochs: int, device: torch.device) -> None:
    """Fit the upstream-matched 7 x 4x200 ensemble once per batch order and initialisation;
    print seconds per epoch and the held-out accuracy of the last epoch's weights."""
    dataset = load_dataset(data, None, False, need_env=False)
    overrides = {
        "hidden_size": [200] * 4,
        "fit_epochs": epochs,
        "weight_decay": WEIGHT_DECAY,
        "normalization": "mad",
        "holdout_by": "trajectory",
        "snapshot": "last",
    }
    print(
        f"\n{data}: {len(dataset.observations)} transitions, 7 x 4x200 probabilistic, "
        f"{epochs} epochs, {torch.get_num_threads()} thread(s)",
        flush=True,
    )
    print(
        f"{'batch_order':<12}{'init':<7}{'s/epoch':>9}{'MSE':>9}{'ens MSE':>9}{'NLL':>9}"
        f"{'z2':>8}{'in 1sd':>8}",
        flush=True,
    )
    for batch_order in BATCH_ORDERS:
        for init in INITS:
            cfg = load_ensemble_config(
                Path(__file__).parents[1] / "config/ensembles/pnn.yaml",
                {**overrides, "batch_order": batch_order, "init": init},
            )
            torch.manual_seed(0)
            model = DynamicsEnsemble(
                dataset.obs_dim, dataset.act_dim, cfg["hidden_size"], cfg["num_models"], True,
                cfg["activation"], False, init=init,
            )  # fmt: skip
            start = time.perf_counter()
            result = fit_ensemble(model, dataset, build(FitConfig, cfg), 0, device)
            seconds = (time.perf_counter() - start) / result.epochs_run
            h = result.holdout
            print(
                f"{batch_order:<12}{init:<7}{seconds:>9.1f}{h['holdout_mse']:>9.4f}"
                f"{h['holdout_mse_ensemble']:>9.4f}{h['holdout_nll']:>9.3f}"
                f"{h['holdout_z2']:>8.2f}{h['holdout_within_1sigma']:>8.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--seconds", type=float, default=0.4, help="length of one timing")
    parser.add_argument("--accuracy", metavar="DATA", help="also fit on this HDF5 dataset")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each --accuracy fit")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)

    print(
        f"device {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    print(
        f"{'ensemble':<12}{'ours ms':>9}{'loop ms':>9}{'speedup':>9}{'ours GF/s':>11}"
        f"{'loop GF/s':>11}{'peak GF/s':>11}{'ours/peak':>11}"
        f"{'compiled ms':>13}{'speedup':>9}{'of peak':>9}",
        flush=True,
    )
    peak_call, peak_gflop = matmul(device)
    for hidden in ([200] * 4, [512] * 4):
        fns = {
            "ours": batched_step(hidden, device, compile=False),
            "compiled": batched_step(hidden, device, compile=True),
            "loop": loop_step(hidden, device),
            "peak": peak_call,
        }
        t = interleaved_seconds(fns, device, args.seconds)
        ours, loop, peak, compiled = t["ours"], t["loop"], peak_gflop / t["peak"], t["compiled"]
        flops, name = step_gflop(hidden), f"7 x 4x{hidden[0]}"
        print(
            f"{name:<12}{ours * 1e3:>9.2f}{loop * 1e3:>9.2f}{loop / ours:>8.2f}x"
            f"{flops / ours:>11.0f}{flops / loop:>11.0f}{peak:>11.0f}{flops / ours / peak:>11.0%}"
            f"{compiled * 1e3:>13.2f}{loop / compiled:>8.2f}x{flops / compiled / peak:>9.0%}",
            flush=True,
        )
    print(
        "targets: speedup >= 1.5x at 4x200, ours/peak >= 50% at 4x512; "
        f"load average now {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if args.accuracy:
        accuracy(args.accuracy, args.epochs, device)


if __name__ == "__main__":
    main()
