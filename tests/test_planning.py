"""PETS: CEM, propagation on a hand-built ensemble, costs, the online loop and its CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ombrl.cli import main
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.planning import (
    NON_FINITE_COST,
    CEMOptimizer,
    MPCAgent,
    Propagator,
    RandomOptimizer,
    load_pets_config,
    planning_model,
    train_pets,
    trajectory_costs,
)
from ombrl.planning.propagation import PlanningNet
from ombrl.tasks import Task

SMALL = Path(__file__).parents[1] / "config" / "pets" / "small.yaml"


# ---------------------------------------------------------------------------------------------
# optimisers


def test_cem_finds_a_quadratic_optimum_and_samples_inside_the_bounds() -> None:
    g = torch.Generator().manual_seed(0)
    low, high = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])
    init_var = ((high - low) ** 2 / 16).expand(3, 2)
    seen = []

    def quadratic(target: torch.Tensor):
        def cost(x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return (x - target).square().sum(dim=(1, 2))

        return cost

    cem = CEMOptimizer(400, 40, 5, 0.1, 1e-6, low, high, g)
    target = torch.tensor([[0.5, -1.0], [-0.4, 0.8], [0.0, 0.3]])  # H=3 x A=2
    mean = cem.optimize(quadratic(target), torch.zeros(3, 2), init_var)
    assert len(seen) == 5
    assert (mean - target).abs().max() < 0.05
    # An optimum outside the box: CEM moves to the bound, never sampling beyond it.
    mean = cem.optimize(quadratic(torch.full((3, 2), 5.0)), torch.zeros(3, 2), init_var)
    samples = torch.cat(seen)
    assert (samples >= low).all() and (samples <= high).all()
    assert (mean > 0.5 * high).all()


def test_cem_iterations_are_upstreams_on_the_same_noise() -> None:
    """Two CEM iterations against upstream's `CEMOptimizer.obtain_solution` (handful-of-trials
    cem.py:121-135) written in numpy: variance capped at the squared half distance to the
    nearer bound, truncated-normal samples, the elites' mean and population variance smoothed
    with alpha. The noise is torch's truncated normal on the same generator."""
    low, high = np.array([-1.0, -2.0]), np.array([1.0, 3.0])
    mean0 = np.array([[0.6, -1.5], [0.0, 2.0], [-0.9, 0.5]])  # near bounds: capping matters
    var0 = np.tile(np.square(high - low) / 16, (3, 1))
    target = np.array([[0.5, -1.0], [-0.4, 0.8], [0.0, 0.3]])
    popsize, elites, alpha = 20, 4, 0.25

    def cost(x):
        return np.square(x - target).sum(axis=(1, 2))

    g = torch.Generator().manual_seed(7)
    mean, var = mean0.copy(), var0.copy()
    for _ in range(2):
        noise = torch.nn.init.trunc_normal_(torch.empty(popsize, 3, 2), 0, 1, -2, 2, generator=g)
        capped = np.minimum(
            np.minimum(np.square((mean - low) / 2), np.square((high - mean) / 2)), var
        )
        samples = noise.double().numpy() * np.sqrt(capped) + mean
        best = samples[np.argsort(cost(samples))][:elites]
        mean = alpha * mean + (1 - alpha) * best.mean(axis=0)
        var = alpha * var + (1 - alpha) * best.var(axis=0)
    cem = CEMOptimizer(
        popsize, elites, 2, alpha, 1e-9, torch.tensor(low), torch.tensor(high),
        torch.Generator().manual_seed(7),
    )  # fmt: skip
    got = cem.optimize(
        lambda x: torch.as_tensor(cost(x.double().numpy())),
        torch.tensor(mean0, dtype=torch.float32),
        torch.tensor(var0, dtype=torch.float32),
    )
    np.testing.assert_allclose(got.numpy(), mean, atol=1e-5)


def test_cem_stops_on_epsilon_and_random_shooting_returns_its_best_sample() -> None:
    g = torch.Generator().manual_seed(1)
    low, high = torch.tensor([-1.0]), torch.tensor([1.0])
    calls = []
    cem = CEMOptimizer(10, 2, 5, 0.0, 1.0, low, high, g)  # initial variance 0.25 <= epsilon
    cem.optimize(
        lambda x: calls.append(1) or x.sum(dim=(1, 2)), torch.zeros(2, 1), torch.full((2, 1), 0.25)
    )
    assert calls == []
    samples = []

    def cost(x: torch.Tensor) -> torch.Tensor:
        samples.append(x)
        return (x - 0.3).abs().sum(dim=(1, 2))

    best = RandomOptimizer(500, low, high, g).optimize(cost, torch.zeros(4, 1), torch.ones(4, 1))
    costs = cost(samples[0])
    assert torch.equal(best, samples[0][torch.argmin(costs)])
    assert (samples[0].abs() <= 1).all()


# ---------------------------------------------------------------------------------------------
# propagation on a hand-built two-member ensemble: obs 1, act 1, no hidden layer


def two_members(deltas=(1.0, 3.0), var=(1e-8, 1e-8), probabilistic=True) -> DynamicsEnsemble:
    """Member m predicts `s' = s + deltas[m]` with variance `var[m]`, whatever (s, a)."""
    model = DynamicsEnsemble(1, 1, [], 2, probabilistic, "swish", False)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[:, 0, 0] = torch.tensor(deltas)
        if probabilistic:
            model.min_logvar.fill_(-30.0)
            model.max_logvar.fill_(20.0)
            # The soft bounds leave a log-variance well inside them (almost) unchanged.
            model.head.bias[:, 0, 1] = torch.log(torch.tensor(var))
    return model.eval()


def propagate(prop: Propagator, start: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """States after each step from `start` (P x N x 1), actions zero."""
    states, out = start, []
    for _ in range(steps):
        states = prop.step(states, torch.zeros(start.shape[0], 1))
        out.append(states)
    return out


def test_planning_net_matches_predict() -> None:
    torch.manual_seed(0)
    model = DynamicsEnsemble(5, 2, [16, 16], 3, True, "swish", True)
    model.set_normalizers(torch.randn(7), torch.rand(7) + 0.5, torch.randn(6), torch.rand(6) + 0.5)
    obs, act = torch.randn(3, 10, 5), torch.randn(3, 10, 2)
    with torch.no_grad():
        pred = model.predict(obs, act)
        mean, std = PlanningNet(model)(obs, act)
    torch.testing.assert_close(mean, pred.next_obs_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, pred.next_obs_var.sqrt(), atol=1e-5, rtol=1e-5)


def test_tsinf_keeps_each_particles_member_for_the_whole_trajectory() -> None:
    g = torch.Generator().manual_seed(0)
    prop = Propagator(two_members(), "TSinf", 4, True, g)
    states = propagate(prop, torch.zeros(3, 4, 1), 6)
    steps = torch.diff(torch.stack([torch.zeros(3, 4, 1), *states]), dim=0).squeeze(-1)
    expected = torch.tensor([1.0, 1.0, 3.0, 3.0]).expand(6, 3, 4)  # particle j: member j // 2
    torch.testing.assert_close(steps, expected, atol=1e-3, rtol=0)


def test_ts1_resamples_each_particles_member_every_step() -> None:
    g = torch.Generator().manual_seed(0)
    prop = Propagator(two_members(), "TS1", 4, True, g)
    states = propagate(prop, torch.zeros(3, 4, 1), 40)
    steps = torch.diff(torch.stack([torch.zeros(3, 4, 1), *states]), dim=0).squeeze(-1).round()
    assert set(steps.unique().tolist()) == {1.0, 3.0}
    # Every step each candidate sends exactly half its particles to each member ...
    assert ((steps == 1).sum(dim=-1) == 2).all()
    # ... and the members change: each particle meets both, switching often (about half the
    # steps for a uniform reassignment; TSinf never switches).
    assert ((steps == 1).any(dim=0) & (steps == 3).any(dim=0)).all()
    switches = (steps[1:] != steps[:-1]).float().mean()
    assert 0.4 < switches < 0.8


def test_e_propagates_the_mean_of_the_one_gaussian() -> None:
    g = torch.Generator().manual_seed(0)
    prop = Propagator(two_members(var=(0.5, 2.0)), "E", 20, True, g)
    assert prop.num_particles == 1  # deterministic: one particle per candidate
    start = torch.tensor([[[0.0]], [[10.0]]])
    states = propagate(prop, start, 3)
    torch.testing.assert_close(states[-1], start + 3 * 2.0)  # mean of the means, no noise


def test_ds_samples_each_particle_from_the_one_gaussian() -> None:
    """One Gaussian: mean (1 + 3) / 2, variance mean(0.5, 1.5) + var(1, 3) = 1 + 1 = 2."""
    start = torch.tensor([[[0.0]], [[10.0]]]).expand(2, 5000, 1)
    prop = Propagator(
        two_members(var=(0.5, 1.5)), "DS", 5000, True, torch.Generator().manual_seed(3)
    )
    out = prop.step(start, torch.zeros(2, 1))
    z = torch.randn(2 * 5000, 1, generator=torch.Generator().manual_seed(3)).view(2, 5000, 1)
    torch.testing.assert_close(out, start + 2.0 + z * math.sqrt(2.0), atol=1e-4, rtol=1e-5)
    assert abs(out[0].var().item() - 2.0) < 0.1  # one Gaussian, not the two members' modes


def test_mm_refits_the_candidates_sampled_changes_and_adds_them_to_each_particle() -> None:
    """Upstream MM (handful-of-trials MPC.py:339-349, model outputs are changes of state):
    changes sampled as DS, one Gaussian per candidate refitted to them (population variance),
    resampled, added to each particle's own state."""
    model = two_members(var=(0.5, 1.5))
    start = torch.tensor([[[0.0], [4.0], [-2.0], [1.0]], [[10.0], [10.0], [7.0], [30.0]]])
    ds = Propagator(model, "DS", 4, True, torch.Generator().manual_seed(5))
    changes = (ds.step(start, torch.zeros(2, 1)) - start).numpy()
    z = torch.randn(start.shape, generator=ds.generator).numpy()  # the draw MM takes next
    mm = Propagator(model, "MM", 4, True, torch.Generator().manual_seed(5))
    out = mm.step(start, torch.zeros(2, 1)).numpy()
    mean = changes.mean(axis=1, keepdims=True)
    var = np.square(changes - mean).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(out, start.numpy() + mean + z * np.sqrt(var), atol=1e-5)
    # Many particles spread far apart: each one's change follows the one Gaussian of DS
    # (mean 2, variance 2), whatever its state; the states themselves are not refitted.
    wide = torch.linspace(-100.0, 100.0, 4000).view(1, 4000, 1)
    big = Propagator(model, "MM", 4000, True, torch.Generator().manual_seed(6))
    step = big.step(wide, torch.zeros(1, 1)) - wide
    assert abs(step.mean().item() - 2.0) < 0.1 and abs(step.var().item() - 2.0) < 0.2
    assert abs(np.corrcoef(step.flatten().numpy(), wide.flatten().numpy())[0, 1]) < 0.05


def test_one_ensemble_call_per_planning_step() -> None:
    for prop_type in ("E", "DS", "TS1", "TSinf", "MM"):
        prop = Propagator(two_members(), prop_type, 4, True, torch.Generator().manual_seed(0))
        calls: list = []
        net = prop.net
        prop.net = lambda o, a, net=net, calls=calls: calls.append(o.shape) or net(o, a)
        task = _task(lambda s, a, n: torch.zeros(n.shape[0]))
        trajectory_costs(prop, task, torch.zeros(1), torch.zeros(7, 5, 1))
        assert len(calls) == 5, prop_type  # horizon 5, population 7


def test_model_types() -> None:
    deterministic = two_members(probabilistic=False)
    with pytest.raises(OmbrlError, match="needs a probabilistic ensemble"):
        planning_model(deterministic, "PE")
    model = two_members()
    model.elites = [1, 0]
    single = planning_model(model, "P")
    assert single.num_models == 1
    with torch.no_grad():
        assert single.predict(
            torch.zeros(1, 1), torch.zeros(1, 1)
        ).next_obs_mean.item() == pytest.approx(3.0)
    assert planning_model(model, "DE") is model


# ---------------------------------------------------------------------------------------------
# costs


def _task(reward, terminal=None) -> Task:
    never = lambda s, a, n: torch.zeros(n.shape[0], dtype=torch.bool)  # noqa: E731
    return Task("toy", "Toy-v0", 1, 1, -1.0, 1.0, reward, terminal or never)


def test_terminal_states_are_absorbing_and_non_finite_costs_are_1e6() -> None:
    prop = Propagator(two_members(), "TSinf", 2, True, torch.Generator().manual_seed(0))
    # Reward 1 per step; terminal once s' > 4: member 0 (+1/step) ends at step 5,
    # member 1 (+3/step) at step 2, both paid on their terminating step.
    task = _task(lambda s, a, n: torch.ones(n.shape[0]), lambda s, a, n: n[:, 0] > 4)
    cost = trajectory_costs(prop, task, torch.zeros(1), torch.zeros(1, 10, 1))
    assert cost.item() == pytest.approx(-(5 + 2) / 2, abs=1e-4)
    # Particle 0 earns 3; particle 1's reward is NaN from its second step (s' = 6).
    nan_task = _task(lambda s, a, n: torch.where(n[:, 0] > 5, float("nan"), 1.0))
    cost = trajectory_costs(prop, nan_task, torch.zeros(1), torch.zeros(1, 3, 1))
    assert cost.item() == pytest.approx((-3 + NON_FINITE_COST) / 2, abs=1e-3)
    # Upstream replaces NaN only (MPC.py:316): a reward of -inf leaves an infinite cost.
    inf_task = _task(lambda s, a, n: torch.where(n[:, 0] > 5, -float("inf"), 1.0))
    assert trajectory_costs(prop, inf_task, torch.zeros(1), torch.zeros(1, 3, 1)).item() == math.inf
    # A state that stops being finite costs 1e6 (upstream: its cost is NaN), even where the
    # task ends the particle there and pays nothing for it.
    blown = Propagator(two_members(deltas=(1.0, math.inf)), "TSinf", 2, True, prop.generator)
    finite = lambda s, a, n: torch.where(torch.isfinite(n[:, 0]), 1.0, 0.0)  # noqa: E731
    ends = lambda s, a, n: ~torch.isfinite(n[:, 0])  # noqa: E731
    cost = trajectory_costs(blown, _task(finite, ends), torch.zeros(1), torch.zeros(1, 3, 1))
    assert cost.item() == pytest.approx((-3 + NON_FINITE_COST) / 2, abs=1e-3)


def test_mpc_starts_each_step_from_the_initial_variance_and_shifts_in_zeros() -> None:
    """Upstream `MPC.act` (MPC.py:214-215): CEM starts from the previous solution shifted by
    one step with zeros appended (not the middle of the bounds, which only `reset` uses) and
    from the initial variance `(ub - lb)^2 / 16` every step."""
    calls = []

    class Recorder:
        def optimize(self, cost_fn, mean, var):
            calls.append((mean.clone(), var.clone()))
            return torch.arange(1.0, 5.0).view(4, 1) * (len(calls) + 1)

    prop = Propagator(two_members(), "TSinf", 2, True, torch.Generator().manual_seed(0))
    task = Task(
        "toy", "Toy-v0", 1, 1, 0.5, 2.5, lambda s, a, n: n[:, 0], lambda s, a, n: n[:, 0] > 9
    )
    agent = MPCAgent(Recorder(), prop, task, 4)
    first = agent.act(np.zeros(1, dtype=np.float32))
    agent.act(np.zeros(1, dtype=np.float32))
    assert first.tolist() == [2.0]
    torch.testing.assert_close(calls[0][0], torch.full((4, 1), 1.5))
    torch.testing.assert_close(calls[1][0], torch.tensor([[4.0], [6.0], [8.0], [0.0]]))
    for _, var in calls:
        torch.testing.assert_close(var, torch.full((4, 1), 0.25))
    agent.reset()
    torch.testing.assert_close(agent.plan, torch.full((4, 1), 1.5))


@pytest.mark.parametrize("prop_type", ["E", "DS", "TS1", "TSinf", "MM"])
def test_costs_in_the_members_layout_equal_a_per_step_reference(prop_type: str) -> None:
    """`trajectory_costs` keeps particles in the members' layout and scores the whole horizon
    at once; a plain loop of `step` on `P x N` particles with per-step rewards and absorbing
    ends, drawing the same random numbers, gives the same costs."""
    model = two_members(var=(0.3, 0.8))
    task = _task(lambda s, a, n: n[:, 0] - a[:, 0].square(), lambda s, a, n: n[:, 0] > 9)
    actions = torch.randn(6, 5, 1, generator=torch.Generator().manual_seed(1))
    obs = torch.tensor([0.5])
    prop = Propagator(model, prop_type, 4, True, torch.Generator().manual_seed(2))
    got = trajectory_costs(prop, task, obs, actions)
    ref = Propagator(model, prop_type, 4, True, torch.Generator().manual_seed(2))
    n = ref.num_particles
    states = obs.expand(6, n, 1)
    returns, alive = torch.zeros(6, n), torch.ones(6, n, dtype=torch.bool)
    for t in range(5):
        nxt = ref.step(states, actions[:, t])
        for i in range(6):
            for j in range(n):
                s, a, s2 = states[i, j : j + 1], actions[i, t : t + 1], nxt[i, j : j + 1]
                if alive[i, j]:
                    returns[i, j] += task.reward(s, a, s2)[0]
                    alive[i, j] = not task.terminal(s, a, s2)[0]
        states = nxt
    assert not alive.all()  # some particles end inside the horizon
    torch.testing.assert_close(got, -returns.mean(dim=1))


# ---------------------------------------------------------------------------------------------
# settings and the CLI's one-line errors


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "colour", "red"], "-o colour: unknown key"),
        (["-ca", "prop-type", "TS2"], "prop_type: 'TS2' is not one of"),
        (["-ca", "model-type", "Q"], "model_type: 'Q' is not one of"),
        (["-ca", "opt-type", "PSO"], "opt_type: 'PSO' is not one of"),
        (["-ca", "speed", "fast"], "-ca speed: unknown"),
        (["-o", "num_elites", "51"], "num_elites: 51 is above popsize (50)"),
        (["-o", "horizon", "0"], "horizon: 0 must be an integer >= 1"),
        (["-ca", "model-type", "P", "-ca", "prop-type", "TSinf"], "needs model_type DE or PE"),
        (["-o", "particles", "5"], "particles: 5 must be a multiple of num_models (2)"),
        (["-o", "weight_decay", "[0.1]"], "weight_decay"),
    ],
)
def test_bad_settings_are_one_line_errors_before_planning(
    extra: list[str], message: str, tmp_path: Path, capsys
) -> None:
    argv = ["pets", "--env", "InvertedPendulum-v5", "--preset", str(SMALL)]
    code = main([*argv, *extra, "--output", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("ombrl: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_unknown_preset_key_and_missing_preset(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.read_text() + "colour: red\n")
    with pytest.raises(OmbrlError, match="unknown key 'colour'"):
        load_pets_config(bad)
    code = main(["pets", "--env", "Hopper-v5", "--preset", "nope", "--output", str(tmp_path)])
    assert code == 2 and "preset 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the online loop


@pytest.mark.slow
def test_pets_reaches_inverted_pendulums_maximum_return(tmp_path: Path) -> None:
    """The issue's end-to-end check: the small preset, through the CLI, balances the pole for
    the whole 1000-step episode (the maximum return) within its few iterations, every output
    written. Random actions return about 5."""
    out = tmp_path / "run"
    argv = ["pets", "--env", "InvertedPendulum-v5", "--preset", str(SMALL), "--seed", "0"]
    code = main([*argv, "--output", str(out), "--quiet", "--checkpoint-dir", str(tmp_path / "c")])
    assert code == 0
    cfg = load_pets_config(SMALL)
    with open(out / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    random = [float(r["return"]) for r in rows if r["policy"] == "random"]
    planned = [float(r["return"]) for r in rows if r["policy"] == "mpc"]
    assert len(random) == cfg.init_episodes and len(planned) == cfg.iterations <= 4
    assert max(random) < 50
    assert max(planned) == 1000.0
    with h5py.File(out / "episodes.hdf5") as f:
        np.testing.assert_allclose(f["returns"][:], planned)
        episodes = [k for k in f if k.startswith("episode_")]
        assert len(episodes) == cfg.init_episodes + cfg.iterations
        last = f[episodes[-1]]
        assert last["observations"].shape[0] == last["actions"].shape[0] + 1
    assert (out / "model.safetensors").exists()
    assert not any((tmp_path / "c").iterdir())  # checkpoints cleared after success


class Killed(Exception):
    pass


def test_resume_after_a_kill_gives_the_same_returns(tmp_path: Path) -> None:
    from ombrl.checkpoint import Checkpointer

    overrides = [("iterations", "2"), ("horizon", "8"), ("popsize", "30"), ("num_elites", "3"),
                 ("fit_epochs", "10"), ("init_episodes", "2")]  # fmt: skip
    cfg = load_pets_config(SMALL, [], overrides)
    env = "InvertedPendulum-v5"
    _, whole = train_pets(env, cfg, 3, "cpu", progress=False)

    def kill_in_iteration_2(row: dict) -> None:
        if row["iteration"] == 2:  # after iteration 1's checkpoint, before iteration 2's
            raise Killed

    ckpt = Checkpointer(tmp_path, {"job": "resume-test"}, every=1)
    with pytest.raises(Killed):
        train_pets(env, cfg, 3, "cpu", kill_in_iteration_2, False, ckpt)
    rows = []
    _, resumed = train_pets(env, cfg, 3, "cpu", rows.append, False, ckpt)
    assert resumed.returns == whole.returns
    assert [r["return"] for r in rows] == [r["return"] for r in whole.rows]
    assert len(rows) == 2 + 2
