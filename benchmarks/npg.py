"""Cost of one MOReL / J-MOReL NPG iteration at J-MOReL's HalfCheetah sizes, by part.

One iteration: 40 start states each rolled out once per elite (160 paths, each following its
elite's mean: `path_scheme: per-model`) for 1000 steps of the current policy (64x64 tanh
Gaussian) in a 7-member 4x512 probabilistic `DynamicsEnsemble` (swish) with 4 elites,
HalfCheetah's task reward, HALT uncertainty (epistemic, over all 7 members as J-MOReL's
`halt_members: all`) measured every step; then the NPG update,
split into its value fit (128x128 ReLU baseline, 1 epoch of batch 256) and its policy step
(GAE, 20 conjugate-gradient iterations, normalised step). Obs 17, act 6. Untrained weights with
the threshold at infinity, so every path runs the full horizon (the cost HALT saves is not
counted).

The rollout (`ombrl.models.paths.model_paths`: one batched `predict` per step for all paths
and members) is compared with:
- loop: the same rollout, but each member's network its own `nn.Sequential`, run one after
  another every step (upstream mjrl / J-MOReL style: one network per model);
- floor: only the batched matmuls the ensemble calls do (`horizon` x 5 `baddbmm` of the same
  shapes on preallocated tensors): no rollout of this ensemble can be cheaper.
Ratios: loop / ours (speedup) and floor / ours (share of the floor reached). The three
rollouts are timed interleaved, `--repeats` rounds, medians printed; the load average is
printed because other processes lower every number.

    .venv/bin/python benchmarks/npg.py [--threads N] [--update-paths 40] [--horizon 1000]
        [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ombrl.agents.npg import NPG, NPGConfig
from ombrl.config import build, resolve_mode
from ombrl.models.ensemble import DynamicsEnsemble, Prediction
from ombrl.models.model_env import Pessimism
from ombrl.models.paths import Paths, model_paths
from ombrl.tasks import get_task

OBS, ACT, MEMBERS, HIDDEN, ELITES = 17, 6, 7, [512] * 4, [0, 1, 2, 3]
# mjrl / J-MOReL's NPG (the schema's defaults; HalfCheetah: init log-std -1.0).
CONFIG = build(
    NPGConfig,
    resolve_mode(
        "morel", {"ensemble": "-", "init_log_std": -1.0, "input_scaling": "none"}, "benchmark"
    ),
)
HALT = Pessimism("partitioning", "epistemic", threshold=float("inf"), halt_reward="add")


def ensemble() -> DynamicsEnsemble:
    """Untrained, with normalisers that keep 1000-step paths finite (small, damped deltas)."""
    torch.manual_seed(0)
    model = DynamicsEnsemble(OBS, ACT, HIDDEN, MEMBERS, True, "swish", False).eval()
    model.set_normalizers(
        torch.zeros(OBS + ACT),
        torch.full((OBS + ACT,), 5.0),
        torch.zeros(OBS),
        torch.full((OBS,), 0.05),
    )
    return model


def member_loop(model: DynamicsEnsemble) -> Callable[[Tensor, Tensor], Prediction]:
    """The same ensemble as one `nn.Sequential` per member, called one after another."""
    members = []
    for m in range(MEMBERS):
        layers: list[nn.Module] = []
        for layer in [*model.hidden, model.head]:
            linear = nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                linear.weight.copy_(layer.weight[m].T)
                linear.bias.copy_(layer.bias[m, 0])
            layers += [linear, nn.SiLU()]
        members.append(nn.Sequential(*layers[:-1]))

    def predict(obs: Tensor, act: Tensor) -> Prediction:
        x = model.normalize_inputs(obs, act)
        means, variances = [], []
        for m, net in enumerate(members):
            mean, logvar = net(x).split(OBS, dim=-1)
            hi, lo = model.max_logvar[m, 0], model.min_logvar[m, 0]
            logvar = hi - F.softplus(hi - logvar)
            logvar = lo + F.softplus(logvar - lo)
            means.append(obs + mean * model.target_std + model.target_mean)
            variances.append(torch.exp(logvar + 2 * torch.log(model.target_std)))
        return Prediction(torch.stack(means), torch.stack(variances), None, None)

    return predict


def matmul_floor(model: DynamicsEnsemble, paths: int, horizon: int) -> Callable[[], None]:
    """Only the ensemble's matmuls of a rollout: horizon x one `baddbmm` per layer."""
    shapes = [(layer.weight, layer.bias) for layer in [*model.hidden, model.head]]
    inputs = [torch.randn(MEMBERS, paths, w.shape[1]) for w, _ in shapes]
    outputs = [torch.empty(MEMBERS, paths, w.shape[2]) for w, _ in shapes]

    def run() -> None:
        with torch.no_grad():
            for _ in range(horizon):
                for (w, b), x, out in zip(shapes, inputs, outputs, strict=True):
                    torch.baddbmm(b, x, w, out=out)

    return run


def rollout(
    agent: NPG, predict: Callable[[Tensor, Tensor], Prediction], start: Tensor, horizon: int
) -> Paths:
    task = get_task("HalfCheetah-v4")
    update_paths = start.shape[0] // len(ELITES)
    return model_paths(
        predict,
        ELITES,
        lambda o: agent.policy(o, deterministic=False),
        start,
        horizon,
        task.reward,
        task.terminal,
        HALT,
        "j-morel",
        torch.Generator().manual_seed(1),
        -1.0,
        1.0,
        path_member=torch.tensor(ELITES).repeat_interleave(update_paths),
        halt_members=list(range(MEMBERS)),
        halt_value="bootstrap",
    )


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--update-paths", type=int, default=40, help="start states per iteration (x elites)"
    )
    parser.add_argument("--horizon", type=int, default=1000, help="steps per path")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    paths = args.update_paths * len(ELITES)
    print(
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {paths} paths "
        f"({args.update_paths} start states x {len(ELITES)} elites) x "
        f"{args.horizon} steps, ensemble {MEMBERS} x 4x512 probabilistic, {len(ELITES)} elites",
        flush=True,
    )
    model = ensemble()
    agent = NPG(OBS, ACT, -1.0, 1.0, CONFIG, torch.device("cpu"), 0)
    start = torch.randn(args.update_paths, OBS, generator=torch.Generator().manual_seed(0))
    start = 0.1 * start.repeat(len(ELITES), 1)  # member-major, as the sampler
    loop_predict = member_loop(model)
    with torch.no_grad():  # the two ensembles compute the same predictions
        x = torch.randn(8, OBS), torch.rand(8, ACT) * 2 - 1
        a, b = model.predict(*x), loop_predict(*x)
        torch.testing.assert_close(a.next_obs_mean, b.next_obs_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.next_obs_var, b.next_obs_var, rtol=1e-4, atol=1e-6)
    floor = matmul_floor(model, paths, args.horizon)
    rollouts: dict[str, Callable[[], object]] = {
        "ours": lambda: rollout(agent, model.predict, start, args.horizon),
        "loop": lambda: rollout(agent, loop_predict, start, args.horizon),
        "floor": floor,
    }
    paths = rollout(agent, model.predict, start, min(args.horizon, 5))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in rollouts}
    for _ in range(args.repeats):
        for name, fn in rollouts.items():
            times[name].append(seconds(fn))
    t = {name: sorted(v)[len(v) // 2] for name, v in times.items()}

    paths = rollout(agent, model.predict, start, args.horizon)
    stats = paths.statistics()
    update_times: dict[str, list[float]] = {"prepare": [], "value": [], "policy": []}
    for _ in range(args.repeats):
        state = agent.state_dict()
        begin = time.perf_counter()
        batch = agent.prepare(paths)
        update_times["prepare"].append(time.perf_counter() - begin)
        update_times["policy"].append(seconds(lambda b=batch: agent.policy_step(b)))
        update_times["value"].append(seconds(lambda b=batch: agent.fit_value(b)))
        agent.load_state_dict(state)
    u = {name: sorted(v)[len(v) // 2] for name, v in update_times.items()}
    steps = int(paths.lengths.sum())
    total = t["ours"] + u["prepare"] + u["policy"] + u["value"]

    print(
        f"paths: mean length {stats['path_length']:.0f}, {steps} samples; medians of "
        f"{args.repeats} (rounds: "
        + ", ".join(f"{n} " + "/".join(f"{s:.2f}" for s in v) for n, v in times.items())
        + " s)",
        flush=True,
    )
    print(f"{'part':<34}{'s':>8}{'share':>8}")
    for name, value in (
        ("model rollout (ours)", t["ours"]),
        ("advantages (values, GAE)", u["prepare"]),
        ("policy step (CG, 20 iterations)", u["policy"]),
        ("value fit (1 epoch, batch 256)", u["value"]),
        ("iteration", total),
    ):
        print(f"{name:<34}{value:>8.2f}{value / total:>8.0%}")
    print(
        f"rollout: ours {t['ours']:.2f} s ({t['ours'] / args.horizon * 1e3:.2f} ms per step), "
        f"per-member loop {t['loop']:.2f} s -> speedup {t['loop'] / t['ours']:.2f}x; "
        f"matmul floor {t['floor']:.2f} s -> ours reaches {t['floor'] / t['ours']:.0%} of it",
        flush=True,
    )
    print(f"load average now {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
