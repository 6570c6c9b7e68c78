"""PETS: CEM, propagation on a hand-built ensemble, costs, the online loop and its CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from ombrl.cli import main
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble, load_ensemble, save_ensemble
from ombrl.models.fit import fit_ensemble
from ombrl.planning import (
    NON_FINITE_COST,
    CEMOptimizer,
    MPCAgent,
    Propagator,
    RandomOptimizer,
    episodes_dataset,
    fit_config,
    load_pets_config,
    make_ensemble,
    planning_model,
    run_episode,
    train_pets,
    trajectory_costs,
)
from ombrl.planning.propagation import PlanningNet
from ombrl.tasks import Task, get_task

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


@pytest.mark.parametrize("angle_dims", [(), (1, 3)])
def test_planning_net_matches_predict(angle_dims: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = DynamicsEnsemble(5, 2, [16, 16], 3, True, "swish", True, angle_dims=angle_dims)
    k = 7 + len(angle_dims)
    model.set_normalizers(torch.randn(k), torch.rand(k) + 0.5, torch.randn(6), torch.rand(6) + 0.5)
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
        (["-o", "obs_preproc", "sincos"], "obs_preproc: 'sincos' is not one of task, none"),
        (["-o", "normalization", "minmax"], "normalization: 'minmax' is not one of std, mad"),
        (["-o", "holdout_ratio", "1"], "holdout_ratio: 1.0 must be a number in [0, 1)"),
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
# the model PETS trains: inputs, targets, refit


def test_model_inputs_are_upstreams_obs_preproc_on_hand_made_states() -> None:
    """`obs_preproc: task` feeds upstream's per-task inputs (config/cartpole.py:43-47,
    halfcheetah.py:43-47; pusher and reacher have none), each formula written here as upstream
    wrote it; `none` the raw observation."""
    act = torch.tensor([[0.5], [-2.0]])
    # InvertedPendulum-v5 / MBRLCartpole: (cart x, pole angle, cart velocity, angular velocity).
    s = torch.tensor([[0.3, 2.9, -1.2, 4.0], [-0.1, -3.1, 0.5, -0.2]])
    upstream = torch.cat([s[:, 1:2].sin(), s[:, 1:2].cos(), s[:, :1], s[:, 2:]], dim=1)
    cfg = load_pets_config(SMALL)
    ours = make_ensemble(cfg, get_task("InvertedPendulum-v5")).model_inputs(s, act)
    # The same columns; the sine and cosine sit in the angle's place (an MLP with i.i.d.
    # initial weights does not tell permuted inputs apart).
    torch.testing.assert_close(ours[:, [1, 2, 0, 3, 4]], upstream)
    torch.testing.assert_close(ours[:, 5:], act)
    turned = s + torch.tensor([0.0, 2 * math.pi, 0.0, 0.0])
    torch.testing.assert_close(make_ensemble(cfg, get_task("InvertedPendulum-v5")).model_inputs(
        turned, act), ours, atol=1e-5, rtol=0)  # fmt: skip
    raw = load_pets_config(SMALL, [], [("obs_preproc", "none")])
    torch.testing.assert_close(
        make_ensemble(raw, get_task("InvertedPendulum-v5")).model_inputs(s, act),
        torch.cat([s, act], dim=1),
    )
    # HalfCheetah-v5 is upstream's MBRLHalfCheetah observation without its obs[0] (a
    # finite-difference velocity), which upstream's obs_preproc drops anyway.
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 17, generator=g) * 3
    a = torch.rand(2, 6, generator=g) * 2 - 1
    u = torch.cat([torch.tensor([[7.0], [-1.0]]), s], dim=1)
    upstream = torch.cat([u[:, 1:2], u[:, 2:3].sin(), u[:, 2:3].cos(), u[:, 3:]], dim=1)
    ours = make_ensemble(cfg, get_task("HalfCheetah-v5")).model_inputs(s, a)
    torch.testing.assert_close(ours, torch.cat([upstream, a], dim=1))
    for env_id, obs_dim, act_dim in (("Reacher-v5", 10, 2), ("Pusher-v5", 23, 7)):
        s, a = torch.randn(2, obs_dim, generator=g), torch.randn(2, act_dim, generator=g)
        ours = make_ensemble(cfg, get_task(env_id)).model_inputs(s, a)
        torch.testing.assert_close(ours, torch.cat([s, a], dim=1))


def test_an_ensemble_keeps_its_angle_dims_in_its_files(tmp_path: Path) -> None:
    """A PETS ensemble's file records its angles and loads with them; any other ensemble's
    architecture has no such key (files written before it existed load as before)."""
    cfg = load_pets_config(SMALL)
    model = make_ensemble(cfg, get_task("InvertedPendulum-v5"))
    save_ensemble(model, tmp_path / "a", {})
    loaded, _ = load_ensemble(tmp_path / "a")
    assert loaded.angle_dims == (1,) and loaded.in_dim == 6
    s, a = torch.randn(3, 4), torch.randn(3, 1)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.predict(s, a).next_obs_mean, model.predict(s, a).next_obs_mean
        )
    raw = make_ensemble(
        load_pets_config(SMALL, [], [("obs_preproc", "none")]), get_task("InvertedPendulum-v5")
    )
    assert "angle_dims" not in raw.architecture and raw.in_dim == 5


@pytest.mark.parametrize("preset", ["InvertedPendulum-v5", "HalfCheetah-v5", "Pusher-v5",
                                    "Reacher-v5", "small"])  # fmt: skip
def test_presets_refit_as_upstream(preset: str) -> None:
    """Every preset refits as upstream's `BNN.train` (BNN.py:240-262, holdout_ratio 0):
    on every transition, each member's last epoch kept, inputs standardised over all of
    them (`TensorStandardScaler.fit`, std < 1e-12 counted as 1), targets `s' - s` raw."""
    cfg = load_pets_config(SMALL.parent / f"{preset}.yaml")
    assert (cfg.obs_preproc, cfg.normalization, cfg.holdout_ratio) == ("task", "std_inputs", 0)
    if preset != "small":
        return
    env_id = "InvertedPendulum-v5"
    rng = np.random.default_rng(0)
    env = gym.make(env_id)
    episodes = [run_episode(env, lambda _: rng.uniform(-3, 3, 1), seed, None) for seed in range(3)]
    env.close()
    data = episodes_dataset(episodes, env_id)
    cfg = load_pets_config(SMALL, [], [("fit_epochs", "3")])
    torch.manual_seed(0)
    model = make_ensemble(cfg, get_task(env_id))
    result = fit_ensemble(model, data, fit_config(cfg), 0, torch.device("cpu"), progress=False)
    assert len(result.holdout_indices) == 0 and result.best_epoch == [3, 3]
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    s = data.observations.astype(np.float64)
    x = np.concatenate([np.sin(s[:, 1:2]), np.cos(s[:, 1:2]), s[:, :1], s[:, 2:], data.actions],
                       axis=1)  # fmt: skip
    sigma = x.std(axis=0)
    sigma[sigma < 1e-12] = 1.0
    order = [1, 2, 0, 3, 4, 5]  # ours -> upstream's column order
    np.testing.assert_allclose(model.input_mean.numpy()[order], x.mean(axis=0), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(model.input_std.numpy()[order], sigma, rtol=1e-5)
    assert (model.target_mean == 0).all() and (model.target_std == 1).all()


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
