"""SAC gradient updates per second: ours against a straightforward PyTorch SAC.

Ours (`ombrl.agents.sac.SAC.update`) keeps both critics in `2 x in x out` tensors (one
`baddbmm` per layer for both), computes the gradients by hand instead of through autograd
(no critic weight gradients in the actor step), samples the target's and the actor step's
actions in one actor pass, and steps fused Adam (actor and temperature in one). "compiled" is
the same agent with `compile: true` (its two gradient computations `torch.compile`d).
The reference is the usual textbook layout (Spinning Up / CleanRL): one `nn.Module` per Q
critic plus deep-copied targets, a plain `torch.optim.Adam` per network (actor, Q1, Q2,
temperature), autograd, critics frozen during the actor step, a Python loop over parameters for
the polyak update. Same sizes and hyperparameters (obs 17, act 6, 256x256 ReLU nets, batch 256,
gamma 0.99, tau 0.005, lr 3e-4, learned alpha); both draw batches from the same replay buffer
of random data on the device and return their metrics with one host transfer, so the
difference is the update itself.

Each timing is `--steps` updates; `--repeats` timings of each alternate (ours, compiled,
reference, floor, ours, ...) so a load change on a shared machine hits them all; the median is
reported after warm-up, with every timing listed as the spread. The CPU-time ratio (process
time, all threads) is printed too: on a machine shared with other jobs it moves less than the
wall-clock one. The last timing, the matmul floor, does only the matmuls every SAC update must
do (and the same batch sampling): no implementation can beat its rate, so it says how far the
1.5x target is reachable. Torch's default thread count is the machine's cores; `--threads 1`
shows the single-core case, where the matmuls, which no implementation avoids, weigh most.

    .venv/bin/python benchmarks/sac.py [--device auto] [--threads N] [--steps 100] [--repeats 9]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ombrl.agents.buffer import Batch, ReplayBuffer
from ombrl.agents.sac import SAC, SACConfig

OBS, ACT, HIDDEN, BATCH, CAPACITY = 17, 6, [256, 256], 256, 100_000
CONFIG = SACConfig(hidden_size=HIDDEN, gamma=0.99, tau=0.005, lr=3e-4, batch_size=BATCH, alpha=None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_buffer(device: torch.device) -> ReplayBuffer:
    """CAPACITY transitions of random data (terminal 1 in ~1% of them) on the device."""
    g = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(CAPACITY, OBS, ACT, device)
    buffer.add(
        Batch(
            obs=torch.randn(CAPACITY, OBS, generator=g),
            act=torch.rand(CAPACITY, ACT, generator=g) * 2 - 1,
            rew=torch.randn(CAPACITY, generator=g),
            next_obs=torch.randn(CAPACITY, OBS, generator=g),
            terminal=(torch.rand(CAPACITY, generator=g) < 0.01).float(),
        )
    )
    return buffer


def mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, HIDDEN[0]),
        nn.ReLU(),
        nn.Linear(HIDDEN[0], HIDDEN[1]),
        nn.ReLU(),
        nn.Linear(HIDDEN[1], out_dim),
    )


class QNetwork(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(OBS + ACT, 1)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


class Actor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(OBS, 2 * ACT)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        std = log_std.clamp(-20, 2).exp()
        u = mean + std * torch.randn_like(mean)
        log_prob = -0.5 * ((u - mean) / std).square() - std.log() - 0.5 * math.log(2 * math.pi)
        log_prob = log_prob.sum(-1) - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob


class ReferenceSAC:
    """Textbook SAC: separate critics, deep-copied targets, one plain Adam per network."""

    def __init__(self, device: torch.device) -> None:
        self.actor = Actor().to(device)
        self.q1, self.q2 = QNetwork().to(device), QNetwork().to(device)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in [*self.q1_target.parameters(), *self.q2_target.parameters()]:
            p.requires_grad_(False)
        self.log_alpha = torch.zeros((), device=device, requires_grad=True)
        self.target_entropy = -float(ACT)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=CONFIG.lr)
        self.q1_opt = torch.optim.Adam(self.q1.parameters(), lr=CONFIG.lr)
        self.q2_opt = torch.optim.Adam(self.q2.parameters(), lr=CONFIG.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=CONFIG.lr)

    def update(self, b: Batch) -> dict[str, float]:
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_act, next_log_prob = self.actor(b.next_obs)
            next_q = torch.min(
                self.q1_target(b.next_obs, next_act), self.q2_target(b.next_obs, next_act)
            )
            target = b.rew + CONFIG.gamma * (1 - b.terminal) * (next_q - alpha * next_log_prob)
        q1, q2 = self.q1(b.obs, b.act), self.q2(b.obs, b.act)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.q1_opt.zero_grad()
        self.q2_opt.zero_grad()
        critic_loss.backward()
        self.q1_opt.step()
        self.q2_opt.step()

        critic_params = [*self.q1.parameters(), *self.q2.parameters()]
        for p in critic_params:
            p.requires_grad_(False)
        act, log_prob = self.actor(b.obs)
        actor_loss = (alpha * log_prob - torch.min(self.q1(b.obs, act), self.q2(b.obs, act))).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        for p in critic_params:
            p.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for net, target_net in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, p_target in zip(net.parameters(), target_net.parameters(), strict=True):
                    p_target.mul_(1 - CONFIG.tau).add_(CONFIG.tau * p)
        values = torch.stack(
            [critic_loss.detach(), actor_loss.detach(), alpha, q1.detach().mean(), -log_prob.mean()]
        ).tolist()
        keys = ("critic_loss", "actor_loss", "alpha", "q_mean", "entropy")
        return dict(zip(keys, values, strict=True))


def matmul_floor(device: torch.device) -> Callable[[Batch], None]:
    """An `update` that does only the matmuls no SAC update can skip, on random tensors.

    Per update: the actor on the 2B rows of s' and s; target and online critics (both nets) on
    the batch; the critics' weight gradients and the hidden input gradient; both critics on the
    actor's actions and the gradient with respect to those actions through one critic per row;
    the actor's weight and input gradients on B rows. The width-1 output layers of the critics
    (dot products, not matmuls) are left out. Its rate bounds any implementation's from above.
    """
    g = torch.Generator().manual_seed(2)
    b, h, c, out = BATCH, HIDDEN[0], OBS + ACT, 2 * ACT

    def r(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g).to(device)

    crit_w, crit_x, crit_h = (r(2, c, h), r(2, h, h)), r(2, b, c), r(2, b, h)
    act_w = (r(OBS, h), r(h, h), r(h, out))
    act_x, act_h, act_out = r(2 * b, OBS), r(2 * b, h), r(b, out)
    critics_forward = [(crit_x, crit_w[0]), (crit_h, crit_w[1])]
    products = [
        *[(act_x, act_w[0]), (act_h, act_w[1]), (act_h, act_w[2])],  # actor on s' and s
        *critics_forward,  # target critics on (s', a')
        *critics_forward,  # online critics on (s, a)
        *[(crit_x.mT, crit_h), (crit_h.mT, crit_h), (crit_h, crit_w[1].mT)],  # their gradients
        *critics_forward,  # online critics on (s, a ~ pi)
        *[(act_h[:b], crit_w[1][0].T), (act_h[:b], crit_w[0][0][OBS:].T)],  # dQ/da
        *[(act_x[:b].T, act_h[:b]), (act_h[:b].T, act_h[:b]), (act_h[:b].T, act_out)],
        *[(act_out, act_w[2].T), (act_h[:b], act_w[1].T)],  # the actor's gradients
    ]

    def update(batch: Batch) -> None:
        for left, right in products:
            torch.matmul(left, right)

    return update


def trainer(update: Callable[[Batch], dict], buffer: ReplayBuffer, device: torch.device):
    """`steps -> (wall seconds, CPU seconds)` running that many sample-and-update steps."""
    generator = torch.Generator(device).manual_seed(1)

    def run(steps: int) -> tuple[float, float]:
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            update(buffer.sample(BATCH, generator))
        sync(device)
        return time.perf_counter() - start, time.process_time() - cpu_start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--steps", type=int, default=100, help="updates per timing")
    parser.add_argument("--repeats", type=int, default=9, help="timings of each (odd)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.manual_seed(0)

    buffer = random_buffer(device)
    ours_agent = SAC(OBS, ACT, -1.0, 1.0, CONFIG, device, seed=0)
    compiled_agent = SAC(OBS, ACT, -1.0, 1.0, replace(CONFIG, compile=True), device, seed=0)
    runs = {
        "ours": trainer(ours_agent.update, buffer, device),
        "compiled": trainer(compiled_agent.update, buffer, device),
        "reference": trainer(ReferenceSAC(device).update, buffer, device),
        "floor": trainer(matmul_floor(device), buffer, device),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    threads = torch.get_num_threads()
    print(f"device {device} ({name}), torch threads {threads}, torch {torch.__version__}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for run in runs.values():
        run(max(20, args.steps // 5))  # warm-up: allocator, kernels, Adam state
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, run in runs.items():
            times[key].append(run(args.steps))
    middle = args.repeats // 2
    rate = {key: args.steps / sorted(w for w, _ in t)[middle] for key, t in times.items()}
    cpu = {key: sorted(c for _, c in t)[middle] for key, t in times.items()}
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for key in runs:
        spread = ", ".join(f"{args.steps / w:.0f}" for w, _ in times[key])
        print(f"{key:<10} {rate[key]:8.1f} updates/s  (median of {args.repeats}: {spread})")
    for key in ("ours", "compiled"):
        print(
            f"{key} / reference: {rate[key] / rate['reference']:.2f}x "
            f"(in CPU time {cpu['reference'] / cpu[key]:.2f}x)"
        )
    print(
        f"matmul floor: at most {rate['floor'] / rate['reference']:.2f}x the reference; "
        f"ours runs at {rate['ours'] / rate['floor']:.0%} of the floor's rate, "
        f"compiled at {rate['compiled'] / rate['floor']:.0%}"
    )


if __name__ == "__main__":
    main()
