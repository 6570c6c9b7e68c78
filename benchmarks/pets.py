"""Seconds per PETS action: the batched planner against a per-member loop and a matmul floor.

Two settings, each with a randomly initialised probabilistic ensemble (planning cost does not
depend on what the weights learned):

- halfcheetah: upstream's PETS setting: CEM popsize 500, 50 elites, 5 iterations, horizon 30,
  20 particles, TSinf, a 5-member 4x200 swish PE, obs 17, act 6 (HalfCheetah-v5's reward);
- small: `config/pets/small.yaml` on InvertedPendulum-v5 (obs 4, act 1).

Timed per action (`MPCAgent.act`, CEM included):
- ours: the planner as `ombrl pets` runs it (one batched ensemble call per planning step);
- loop: the same plan with the ensemble call replaced by a Python loop over members, each
  member's layers applied to its own particles (upstream dynamics-ensembles-rl style);
- floor: only the batched matmuls of those ensemble calls (same shapes, `iterations x horizon`
  calls per action), no activation, sampling, reward or CEM: what no implementation beats.
Ratios: floor / ours (target >= 50%), loop / ours (target >= 3x) and floor / loop (how close
the loop itself is to the floor: a loop near the floor leaves no 3x to win). The three are
timed interleaved, `--actions` actions each per round, 3 rounds, medians printed.

    .venv/bin/python benchmarks/pets.py [--threads N] [--actions 2]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from ombrl.planning import load_pets_config, make_agent, make_ensemble
from ombrl.planning.propagation import PlanningNet
from ombrl.tasks import get_task

ROOT = Path(__file__).parents[1]
SETTINGS = {
    "halfcheetah": ("HalfCheetah-v5", ROOT / "config/pets/HalfCheetah-v5.yaml"),
    "small": ("InvertedPendulum-v5", ROOT / "config/pets/small.yaml"),
}


class LoopNet(PlanningNet):
    """The same function as `PlanningNet`, one member at a time."""

    def __call__(self, obs, act):
        x = torch.cat([obs, act], dim=-1)
        if x.dim() == 2:
            x = x.expand(self.num_models, *x.shape)
        means, stds = [], []
        for m in range(self.num_models):
            h = x[m]
            for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
                h = torch.addmm(b[m], h, w[m])
                h = torch.nn.functional.silu(h, inplace=True) if self.swish else h.relu_()
            out = torch.addmm(self.biases[-1][m], h, self.weights[-1][m])
            d = self.obs_dim
            means.append(out[:, :d] + obs[m] if obs.dim() == 3 else out[:, :d] + obs)
            lv = out[:, d:]
            lv = self.max_logvar[m] - torch.nn.functional.softplus(self.max_logvar[m] - lv)
            lv = self.min_logvar[m] + torch.nn.functional.softplus(lv - self.min_logvar[m])
            stds.append(torch.exp(0.5 * lv + self.log_std_scale))
        return torch.stack(means), torch.stack(stds)


def setting(name: str):
    env_id, preset = SETTINGS[name]
    cfg = load_pets_config(preset)
    task = get_task(env_id)
    torch.manual_seed(0)
    ensemble = make_ensemble(cfg, task).eval()
    obs = np.random.default_rng(0).normal(size=task.obs_dim) * 0.1
    ours = make_agent(ensemble, task, cfg, torch.Generator().manual_seed(0))
    loop = make_agent(ensemble, task, cfg, torch.Generator().manual_seed(0))
    loop.propagator.net = LoopNet(loop.propagator.model)
    net = ours.propagator.net
    e = ensemble.num_models
    rows = cfg.popsize * cfg.particles // e  # particles per member per call (TS layout)
    x = torch.randn(e, rows, task.obs_dim + task.act_dim)
    calls = cfg.max_iters * cfg.horizon
    hs = [torch.empty(e, rows, w.shape[-1]) for w in net.weights]

    def floor() -> None:
        for _ in range(calls):
            h = x
            for w, b, out in zip(net.weights, net.biases, hs, strict=True):
                h = torch.baddbmm(b, h, w, out=out)

    widths = [x.shape[-1], *[w.shape[-1] for w in net.weights]]
    flops = 2 * e * rows * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True)) * calls
    return (
        cfg,
        {"ours": lambda: ours.act(obs), "loop": lambda: loop.act(obs), "floor": floor},
        flops,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--actions", type=int, default=2, help="actions per timing")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    print(
        f"{'setting':<12}{'ours s/act':>11}{'loop s/act':>11}{'floor s/act':>12}"
        f"{'floor/ours':>11}{'loop/ours':>10}{'floor/loop':>11}{'floor GF/s':>11}",
        flush=True,
    )
    for name in SETTINGS:
        cfg, fns, flops = setting(name)
        for fn in fns.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(3):
            for key, fn in fns.items():
                start = time.perf_counter()
                for _ in range(args.actions):
                    fn()
                times[key].append((time.perf_counter() - start) / args.actions)
        t = {k: sorted(v)[1] for k, v in times.items()}
        print(
            f"{name:<12}{t['ours']:>11.4f}{t['loop']:>11.4f}{t['floor']:>12.4f}"
            f"{t['floor'] / t['ours']:>11.0%}{t['loop'] / t['ours']:>9.2f}x"
            f"{t['floor'] / t['loop']:>11.0%}"
            f"{flops / t['floor'] / 1e9:>11.0f}",
            flush=True,
        )
    print(
        f"targets: floor/ours >= 50%, loop/ours >= 3x; load average now {os.getloadavg()[0]:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
