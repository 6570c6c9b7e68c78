"""Whole model paths with HALT, and the NPG learner: hand-built dynamics with known answers."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import Tensor

from ombrl.agents.npg import NPG, NPGConfig, PathBatch, conjugate_gradient, gae
from ombrl.config import build, resolve_mode
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import Prediction
from ombrl.models.model_env import Pessimism, rollout
from ombrl.models.paths import Paths, model_paths

CPU = torch.device("cpu")
PENALTY = -50.0
THRESHOLD = 5.0


def config(**overrides) -> NPGConfig:
    """The schema's NPG defaults (mjrl / J-MOReL's values) with small networks; tests override
    what they exercise (a linear policy, `hidden_size=[]`, too, which no study may ask for)."""
    params = {"ensemble": "-", "hidden_size": [32, 32], "value_hidden_size": [32, 32]}
    params["input_scaling"] = "none"
    return replace(build(NPGConfig, resolve_mode("morel", params, "test")), **overrides)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- hand-built models
def step_members(obs: Tensor, act: Tensor) -> Prediction:
    """Two deterministic members: both move s by +1; member 1 adds 10 where s >= 2.5, so the
    epistemic uncertainty is 10 there and 0 elsewhere, and paths are known until they reach it."""
    mean = (obs + 1).expand(2, -1, -1).clone()
    mean[1] += 10.0 * (obs >= 2.5)
    return Prediction(mean, None, None, None)


def zero_policy(obs: Tensor) -> Tensor:
    return torch.zeros(obs.shape[0], 1)


def state_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return obs[:, 0] + 1.0


def never(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return torch.zeros(obs.shape[0], dtype=torch.bool)


def halt(halt_reward: str) -> Pessimism:
    return Pessimism(
        "partitioning",
        "epistemic",
        threshold=THRESHOLD,
        halt_reward=halt_reward,
        halt_penalty=PENALTY,
    )


def halted_value(reward: float, halt_reward: str) -> float:
    return {"replace": PENALTY, "add": reward + PENALTY, "truncate": 0.0}[halt_reward]


def paths_from(starts: list[float], horizon: int, pessimism: Pessimism, truncation: str, **kw):
    start = torch.tensor(starts).unsqueeze(1)
    terminal_fn = kw.pop("terminal_fn", never)
    predict = kw.pop("predict", step_members)
    return model_paths(
        predict,
        [0, 1],
        zero_policy,
        start,
        horizon,
        state_reward,
        terminal_fn,
        pessimism,
        truncation,
        gen(),
        **kw,
    )


# ------------------------------------------------------------------------------------ HALT
@pytest.mark.parametrize("halt_reward", ["replace", "add", "truncate"])
def test_halt_ends_each_path_at_its_first_uncertain_transition(halt_reward: str) -> None:
    # s0 = 0 reaches s = 3 (uncertain) at step 3, s0 = 2 at step 1, s0 = 3 at once; s0 = -10
    # never does within 5 steps. Rewards are s + 1.
    p = paths_from([0.0, 2.0, 3.0, -10.0], 5, halt(halt_reward), "first")
    assert p.lengths.tolist() == [4, 2, 1, 5]
    assert p.halted.tolist() == [True, True, True, False]
    assert p.terminal.tolist() == [True, True, True, False]
    h = halted_value(4.0, halt_reward)  # the uncertain step is at s = 3 in every halted path
    expected = [[1, 2, 3, h, 0], [3, h, 0, 0, 0], [h, 0, 0, 0, 0], [-9, -8, -7, -6, -5]]
    torch.testing.assert_close(p.rew, torch.tensor(expected, dtype=torch.float32))
    assert p.mask.sum(dim=1).tolist() == [4, 2, 1, 5]
    torch.testing.assert_close(p.obs[0, :4, 0], torch.tensor([0.0, 1, 2, 3]))
    assert p.last_obs[3, 0].item() == -5.0
    stats = p.statistics()
    assert stats["paths_truncated"] == 0.75
    assert stats["path_length"] == 3.0
    assert stats["path_return"] == pytest.approx((6 + h + 3 + h + h - 35) / 4)


def test_without_partitioning_paths_run_to_the_horizon() -> None:
    p = paths_from([0.0, 3.0], 6, Pessimism(), "first")
    assert p.lengths.tolist() == [6, 6]
    assert not p.halted.any() and not p.terminal.any()


@pytest.mark.parametrize("halt_reward", ["replace", "add", "truncate"])
def test_j_morel_truncation_keeps_at_least_four_steps(halt_reward: str) -> None:
    # First violations at steps 0 (s0 = 3), 2 (s0 = 1), 3 (s0 = 0), 6 (s0 = -3), never (-10):
    # T = max(4, v + 1) = 4, 4, 4, 7, and 8 (the horizon, not halted).
    p = paths_from([3.0, 1.0, 0.0, -3.0, -10.0], 8, halt(halt_reward), "j-morel")
    assert p.lengths.tolist() == [4, 4, 4, 7, 8]
    assert p.halted.tolist() == [True, True, True, True, False]
    assert p.terminal.tolist() == [True, True, True, True, False]
    for i, length in enumerate(p.lengths.tolist()):
        plain = p.obs[i, :length, 0] + 1.0  # s + 1 on every step the path kept
        if i < 4:  # only the last kept step gets the HALT reward, even past the violation
            plain[-1] = halted_value(plain[-1].item(), halt_reward)
        torch.testing.assert_close(p.rew[i, :length], plain)
    # Steps past the violation were stepped with the model (s grows by 1 or 11 per step).
    assert (p.obs[0, 1:4, 0] >= 4.0).all()
    # With `first`, the same start states stop at the violation itself.
    first = paths_from([3.0, 1.0, 0.0, -3.0, -10.0], 8, halt(halt_reward), "first")
    assert first.lengths.tolist() == [1, 3, 4, 7, 8]


def test_j_morel_path_ending_early_after_a_violation_is_halted_there() -> None:
    # Horizon 2 < 4: the violated path ends at the horizon, terminal, penalty on step 1.
    p = paths_from([3.0], 2, halt("replace"), "j-morel")
    assert p.lengths.tolist() == [2] and p.halted.item() and p.terminal.item()
    assert p.rew[0].tolist() == [4.0, PENALTY]

    # A task termination (at s >= 3.5) at step 1, after the violation at step 0.
    def reached(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        return obs[:, 0] >= 3.5

    p = paths_from([3.0], 8, halt("add"), "j-morel", terminal_fn=reached)
    assert p.lengths.tolist() == [2] and p.halted.item() and p.terminal.item()
    assert p.rew[0, 1].item() == pytest.approx(p.obs[0, 1, 0].item() + 1 + PENALTY)

    # A non-finite prediction at s >= 2 after the violation at s = 1: the path keeps its
    # two finite steps, the second gets the penalty, and it is terminal.
    def blow_up(obs: Tensor, act: Tensor) -> Prediction:
        pred = step_members(obs + 1.5, act)  # disagreement where s >= 1
        mean = torch.where(obs >= 2.0, math.nan, pred.next_obs_mean - 1.5)
        return Prediction(mean, None, None, None)

    p = paths_from([0.0], 8, halt("replace"), "j-morel", predict=blow_up)
    assert p.lengths.tolist() == [2] and p.halted.item() and p.terminal.item()
    assert p.rew[0, :2].tolist() == [1.0, PENALTY]


def test_task_terminations_and_non_finite_predictions_end_paths() -> None:
    def at_two(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        return next_obs[:, 0] >= 2.0

    p = paths_from([0.0, -5.0], 4, Pessimism(), "first", terminal_fn=at_two)
    assert p.lengths.tolist() == [2, 4]
    assert p.terminal.tolist() == [True, False]
    assert not p.halted.any()

    def nan_from_two(obs: Tensor, act: Tensor) -> Prediction:
        mean = torch.where(obs >= 2.0, math.nan, obs + 1).expand(2, -1, -1)
        return Prediction(mean, None, None, None)

    p = paths_from([0.0], 6, halt("replace"), "first", predict=nan_from_two)
    # Steps at s = 0 and 1 are kept; the NaN transition from s = 2 is not used, and the path
    # bootstraps from s = 2 (not terminal).
    assert p.lengths.tolist() == [2]
    assert not p.terminal.item() and not p.halted.item()
    assert p.last_obs[0, 0].item() == 2.0
    assert torch.isfinite(p.rew).all() and torch.isfinite(p.obs).all()


def test_all_paths_share_one_predict_call_per_step() -> None:
    calls: list[int] = []

    def counting(obs: Tensor, act: Tensor) -> Prediction:
        calls.append(obs.shape[0])
        return step_members(obs, act)

    p = paths_from([0.0, 2.0, 3.0, -10.0], 5, halt("replace"), "first", predict=counting)
    # Alive paths per step: 4, 3 (s0 = 3 halted), 2, 2, 1 (s0 = 0 halted at step 3).
    assert calls == [4, 3, 2, 2, 1]
    assert p.lengths.sum().item() == sum(calls)


def test_probabilistic_paths_sample_a_random_elite_and_its_gaussian() -> None:
    # Members predict s + 1 (member 0) and s + 2 (member 1, never an elite), variance 0.25.
    def noisy(obs: Tensor, act: Tensor) -> Prediction:
        mean = torch.stack([obs + 1, obs + 2, obs + 1])
        return Prediction(mean, torch.full_like(mean, 0.25), None, None)

    start = torch.zeros(4000, 1)
    p = model_paths(
        noisy, [0, 2], zero_policy, start, 1, state_reward, never, Pessimism(), "first", gen()
    )
    step = p.last_obs[:, 0]
    assert step.mean().item() == pytest.approx(1.0, abs=0.05)
    assert step.std().item() == pytest.approx(0.5, rel=0.05)


def test_model_sees_clipped_actions_paths_keep_the_samples() -> None:
    seen: list[Tensor] = []

    def record(obs: Tensor, act: Tensor) -> Prediction:
        seen.append(act.clone())
        return Prediction((obs + act).expand(2, -1, -1), None, None, None)

    def big(obs: Tensor) -> Tensor:
        return torch.full((obs.shape[0], 1), 3.0)

    start = torch.zeros(2, 1)
    p = model_paths(
        record, [0, 1], big, start, 2, state_reward, never, Pessimism(), "first", gen(), -1.0, 1.0
    )
    assert all((a == 1.0).all() for a in seen)
    assert (p.act[p.mask] == 3.0).all()
    assert p.last_obs[:, 0].tolist() == [2.0, 2.0]


def test_model_paths_reject_unknown_truncation() -> None:
    with pytest.raises(OmbrlError, match="truncation"):
        paths_from([0.0], 3, Pessimism(), "last")


def test_sac_rollout_honours_truncate() -> None:
    start = torch.tensor([[3.0], [0.0]])
    batch, stats = rollout(
        step_members,
        [0, 1],
        zero_policy,
        start,
        1,
        state_reward,
        never,
        halt("truncate"),
        "sampled",
        gen(),
    )
    assert batch.rew.tolist() == [0.0, 1.0]
    assert batch.terminal.tolist() == [1.0, 0.0]
    assert stats["rollout_halted"] == 0.5


# ------------------------------------------------------------------------- value bootstrap
def constant_value(agent: NPG, c: float) -> None:
    """Make the baseline output `c` everywhere."""
    last = len(agent.cfg.value_hidden_size)
    with torch.no_grad():
        getattr(agent.value_net, f"weight{last}").zero_()
        getattr(agent.value_net, f"bias{last}").fill_(c)


def test_absorbing_halted_paths_do_not_bootstrap_and_horizon_paths_do() -> None:
    # halt_value absorbing (the MOReL paper), value_targets bootstrapped (ombrl's option).
    gamma, lam, c = 0.9, 0.8, 100.0
    cfg = config(gamma=gamma, gae_lambda=lam, value_targets="bootstrapped", value_time_scale=5)
    agent = NPG(1, 1, -1.0, 1.0, cfg, CPU, 0)
    constant_value(agent, c)
    p = paths_from([0.0, -10.0], 5, halt("replace"), "first")  # halted at step 3; horizon
    batch = agent.prepare(p)
    rewards = [[1.0, 2.0, 3.0, PENALTY], [-9.0, -8.0, -7.0, -6.0, -5.0]]
    bootstrap = [0.0, c]  # after the HALT step nothing; after the horizon V(s_5) = c
    returns, advantages = [], []
    for rew, last in zip(rewards, bootstrap, strict=True):
        values = [c] * len(rew) + [last]
        ret, adv, running_ret, running_adv = [], [], last, 0.0
        for t in reversed(range(len(rew))):
            running_ret = rew[t] + gamma * running_ret
            delta = rew[t] + gamma * values[t + 1] - values[t]
            running_adv = delta + gamma * lam * running_adv
            ret.insert(0, running_ret)
            adv.insert(0, running_adv)
        returns += ret
        advantages += adv
    np.testing.assert_allclose(batch.returns.numpy(), returns, rtol=1e-5)
    adv = np.array(advantages)
    np.testing.assert_allclose(
        batch.advantages.numpy(), (adv - adv.mean()) / (adv.std() + 1e-6), rtol=1e-4, atol=1e-5
    )
    assert batch.stats["advantage_mean"] == pytest.approx(adv.mean(), rel=1e-5)
    np.testing.assert_allclose(batch.time.numpy(), [0, 0.2, 0.4, 0.6, 0, 0.2, 0.4, 0.6, 0.8])


def test_gae_with_lambda_one_and_zero_values_is_the_bootstrapped_return() -> None:
    rew = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = gae(rew, mask, torch.zeros(2, 3), torch.tensor([10.0, 5.0]), 0.5, 1.0)
    expected = [[1 + 0.5 + 0.25 + 1.25, 1 + 0.5 + 2.5, 1 + 5.0], [2 + 2.5, 0.0, 0.0]]
    torch.testing.assert_close(out, torch.tensor(expected))


# ------------------------------------------------------------------------- natural gradient
def test_conjugate_gradient_solves_a_random_spd_system() -> None:
    g = gen(3)
    q = torch.randn(30, 30, generator=g, dtype=torch.float64)
    a = q @ q.T + 0.5 * torch.eye(30, dtype=torch.float64)
    b = torch.randn(30, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=200, residual_tol=1e-20)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    # A few iterations already reduce the residual.
    x5 = conjugate_gradient(lambda v: a @ v, b, iters=5)
    assert (a @ x5 - b).norm() < 0.9 * b.norm()


def test_fisher_vector_product_is_the_hessian_of_the_mean_kl() -> None:
    agent = NPG(3, 2, -1.0, 1.0, config(hidden_size=[8, 8], cg_damping=0.0), CPU, 0)
    obs = torch.randn(64, 3, generator=gen(1))
    params = [*agent.mean_net.parameters()]
    log_std = agent.log_std.clone().requires_grad_(True)
    with torch.no_grad():
        mean0 = agent.mean_net(obs)
    mean1 = agent.mean_net(obs)
    # KL(old || new) of diagonal Gaussians, written out here.
    var1 = torch.exp(2 * log_std)
    var0 = torch.exp(2 * agent.log_std)
    kl = (log_std - agent.log_std + (var0 + (mean0 - mean1) ** 2) / (2 * var1) - 0.5).sum(-1)
    grads = torch.autograd.grad(kl.mean(), [*params, log_std], create_graph=True)
    flat = torch.cat([gr.reshape(-1) for gr in grads])
    v = torch.randn(flat.shape[0], generator=gen(2))
    hessian_v = torch.cat(
        [gr.reshape(-1) for gr in torch.autograd.grad(flat.dot(v), [*params, log_std])]
    )
    torch.testing.assert_close(agent.fisher_vector_product(obs)(v), hessian_v, atol=1e-6, rtol=1e-4)


def linear_gaussian_batch(agent: NPG, n: int, seed: int) -> tuple[PathBatch, Tensor]:
    """States s ~ N(0, I), actions from the policy, advantage -(|a - K s|^2) (normalised)."""
    g = gen(seed)
    obs = torch.randn(n, agent.obs_dim, generator=g)
    act = agent.policy(obs, deterministic=False)
    k = torch.randn(agent.obs_dim, agent.act_dim, generator=g)
    adv = -(act - obs @ k).square().sum(-1)
    adv = (adv - adv.mean()) / adv.std()
    batch = PathBatch(obs, act, torch.zeros(n), adv, torch.zeros(n), {})
    return batch, k


def test_npg_step_improves_the_surrogate_and_moves_the_kl_by_half_the_step_size() -> None:
    step = 0.01
    agent = NPG(3, 2, -1.0, 1.0, config(hidden_size=[], step_size=step), CPU, 0)
    batch, _ = linear_gaussian_batch(agent, 4000, seed=1)
    with torch.no_grad():
        mean0 = agent.mean_net(batch.obs).numpy().astype(np.float64)
    log_std0 = agent.log_std.numpy().astype(np.float64).copy()
    metrics = agent.policy_step(batch)
    with torch.no_grad():
        mean1 = agent.mean_net(batch.obs).numpy().astype(np.float64)
    log_std1 = agent.log_std.numpy().astype(np.float64)
    var0, var1 = np.exp(2 * log_std0), np.exp(2 * log_std1)
    kl = (log_std1 - log_std0 + (var0 + (mean0 - mean1) ** 2) / (2 * var1) - 0.5).sum(-1).mean()
    assert metrics["kl"] == pytest.approx(kl, rel=1e-3)
    # The normalised step makes delta^T F delta = step_size: KL = step_size / 2 to second order.
    assert 0.8 * step / 2 < kl < 1.25 * step / 2
    assert abs(metrics["surrogate_before"]) < 1e-5  # normalised advantages, ratio 1
    assert metrics["surrogate_after"] > 0.01
    assert agent.log_std.min().item() >= agent.cfg.min_log_std


def test_log_std_is_clamped_at_its_minimum() -> None:
    agent = NPG(2, 1, -1.0, 1.0, config(hidden_size=[], init_log_std=-0.99, step_size=1.0), CPU, 0)
    g = gen(5)
    obs = torch.randn(2000, 2, generator=g)
    mean = agent.policy(obs, deterministic=True)
    act = agent.policy(obs, deterministic=False)
    adv = -(act - mean).square().sum(-1)  # rewards actions near the mean: shrink the std
    adv = (adv - adv.mean()) / adv.std()
    agent.policy_step(PathBatch(obs, act, torch.zeros(2000), adv, torch.zeros(2000), {}))
    assert agent.log_std.tolist() == [-1.0]


# -------------------------------------------------------------------------- behaviour cloning
def test_bc_init_reproduces_a_linear_expert() -> None:
    # The expert's actions are a linear map of the state, clipped to the bounds [-1, 1].
    g = gen(7)
    k = torch.randn(4, 2, generator=g) * 0.2
    obs = torch.randn(3000, 4, generator=g)
    held_out = torch.randn(500, 4, generator=g)
    agent = NPG(4, 2, -1.0, 1.0, config(bc_steps=480, bc_lr=3e-3, bc_batch_size=128), CPU, 0)
    metrics = agent.bc_init(obs, (obs @ k).clamp(-1, 1), gen(8))
    expert = (held_out @ k).clamp(-1, 1)
    error = (agent.policy(held_out, deterministic=True) - expert).square().mean().item()
    assert error < 0.01 * expert.var().item()
    assert metrics["bc_loss_after"] < 0.01 * metrics["bc_loss_before"]


def test_znorm_standardises_the_policy_input() -> None:
    mean, std = torch.tensor([5.0, -3.0]), torch.tensor([2.0, 0.5])
    raw = NPG(2, 1, -1.0, 1.0, config(), CPU, 0)
    scaled = NPG(2, 1, -1.0, 1.0, config(input_scaling="znorm"), CPU, 0, mean, std)
    obs = torch.randn(10, 2, generator=gen(1)) * std + mean
    torch.testing.assert_close(
        scaled.policy(obs, deterministic=True), raw.policy((obs - mean) / std, deterministic=True)
    )
    with pytest.raises(OmbrlError, match="znorm needs"):
        NPG(2, 1, -1.0, 1.0, config(input_scaling="znorm"), CPU, 0)


# ------------------------------------------------------------------------------- learning
def mover(obs: Tensor, act: Tensor) -> Prediction:
    """The true dynamics `s' = s + 0.1 a` (a clipped to [-1, 1] by the caller), two members."""
    return Prediction((obs + 0.1 * act).expand(2, -1, -1), None, None, None)


def distance_cost(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return -next_obs[:, 0].abs()


def true_return(agent: NPG, start: Tensor, horizon: int) -> float:
    """Mean return of the deterministic policy, stepped in the true dynamics (no model)."""
    obs, total = start, torch.zeros(start.shape[0])
    for _ in range(horizon):
        nxt = obs + 0.1 * agent.policy(obs, deterministic=True).clamp(-1, 1)
        total -= nxt[:, 0].abs()
        obs = nxt
    return total.mean().item()


def paths_of(agent: NPG, pool: Tensor, horizon: int, generator: torch.Generator) -> Paths:
    return model_paths(
        mover,
        [0, 1],
        lambda o: agent.policy(o, deterministic=False),
        pool,
        horizon,
        distance_cost,
        never,
        Pessimism(),
        "first",
        generator,
        -1.0,
        1.0,
    )


def test_npg_learns_to_reach_the_origin_in_a_known_model() -> None:
    # From s in [-2, 2], 30 steps of at most 0.1: the best mean return on the evaluation
    # states is about -7 (move straight to 0); a policy that stays put gets about -32.
    horizon = 30
    cfg = config(hidden_size=[16], step_size=0.05, gamma=0.99, value_epochs=5, value_lr=3e-3)
    agent = NPG(1, 1, -1.0, 1.0, cfg, CPU, 0)
    g = gen(11)
    pool = torch.rand(256, 1, generator=g) * 4 - 2
    evaluation = torch.linspace(-2, 2, 21).unsqueeze(1)
    before = true_return(agent, evaluation, horizon)
    for _ in range(10):
        agent.update(paths_of(agent, pool, horizon, g))
    after = true_return(agent, evaluation, horizon)
    assert before < -25
    assert after > -15, (before, after)


# ------------------------------------------------------------------ seeds and checkpoints
def one_iteration(agent: NPG, seed: int) -> tuple[Paths, dict[str, float]]:
    pool = torch.randn(16, 1, generator=gen(seed))
    paths = paths_of(agent, pool, 20, gen(seed))
    return paths, agent.update(paths)


def test_same_seed_same_numbers_and_state_dict_resumes_exactly() -> None:
    a = NPG(1, 1, -1.0, 1.0, config(), CPU, 3)
    b = NPG(1, 1, -1.0, 1.0, config(), CPU, 3)
    paths_a, metrics_a = one_iteration(a, 0)
    paths_b, metrics_b = one_iteration(b, 0)
    assert torch.equal(paths_a.obs, paths_b.obs) and metrics_a == metrics_b

    resumed = NPG(1, 1, -1.0, 1.0, config(), CPU, 99)
    resumed.load_state_dict(a.state_dict())
    assert resumed.step == 1
    _, next_a = one_iteration(a, 1)
    _, next_resumed = one_iteration(resumed, 1)
    assert next_a == next_resumed
    for key, value in a.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key

    other = NPG(1, 1, -1.0, 1.0, config(hidden_size=[8]), CPU, 3)
    with pytest.raises(OmbrlError, match="NPG state"):
        other.load_state_dict(a.state_dict())


# ------------------------------------------------------------------ upstream's path scheme
# Expected values from upstream's own code, run once on these inputs in a scratch venv
# (numpy 2.4.6): `tests/upstream/morel_values.py`, importing
# J-MOReL 03bdf559 algorithms/morel.py (MOReL.penalize_trajectories; its utils.scaling
# import stubbed, unused there) and mjrl v2 15bf3c0 mjrl/utils/process_samples.py
# (compute_returns, compute_advantages). Members m0 = s + 1 (generates the paths),
# m1 = s + 1 + 10 [s >= 2.5], m2 = s + 1; threshold 5; rewards s + 1; horizon 8.
UPSTREAM_PENALIZED = {  # start state -> (observations, rewards with penalty -50); never terminal
    0.0: ([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, -46.0]),
    1.0: ([1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, -45.0]),
    -10.0: ([-10.0 + k for k in range(8)], [-9.0 + k for k in range(8)]),
}
# mjrl, truncate reward 0, gamma 0.9, lambda 0.8, baseline b(s, t) = 10 s + 12.5 t.
UPSTREAM_RETURNS = [
    [8.146, 7.94, 6.6, 4.0],
    [11.585, 10.65, 8.5, 5.0],
    [-34.4373768, -28.263752, -22.51528, -17.2392, -12.488, -8.32, -4.8, -2.0],
]
UPSTREAM_ADVANTAGES = [
    [44.343568, 32.0744, 16.77, -2.75],
    [44.343568, 32.0744, 16.77, -2.75],
    [60.309413995847, 54.249186105344, 47.5683140352, 40.02543616, 31.285328, 20.8824, 8.17, -7.75],
]


def three_members(obs: Tensor, act: Tensor) -> Prediction:
    mean = (obs + 1).expand(3, -1, -1).clone()
    mean[1] += 10.0 * (obs >= 2.5)
    return Prediction(mean, torch.full_like(mean, 4.0), None, None)  # variance ignored


def upstream_paths(penalty: float, halt_value: str = "bootstrap") -> Paths:
    pessimism = Pessimism(
        "partitioning", "epistemic", threshold=5.0, halt_reward="add", halt_penalty=penalty
    )
    start = torch.tensor([[0.0], [1.0], [-10.0]])
    return model_paths(
        three_members,
        [0],
        zero_policy,
        start,
        8,
        state_reward,
        never,
        pessimism,
        "j-morel",
        gen(),
        path_member=torch.zeros(3, dtype=torch.long),
        halt_members=[0, 1, 2],
        halt_value=halt_value,
        min_steps=5,
    )


def test_per_model_paths_are_j_morels_penalized_trajectories() -> None:
    p = upstream_paths(-50.0)
    for i, (obs, rew) in enumerate(UPSTREAM_PENALIZED.values()):
        n = len(obs)
        assert p.lengths[i].item() == n
        assert p.obs[i, :n, 0].tolist() == obs and p.rew[i, :n].tolist() == rew
    assert not p.terminal.any()  # upstream's `terminated` is False on every path
    assert p.halted.tolist() == [True, True, False]


def test_bootstrap_halt_value_is_mjrls_advantage_and_returns() -> None:
    gamma, lam = 0.9, 0.8
    cfg = config(gamma=gamma, gae_lambda=lam, value_time_scale=8)  # value_targets: returns
    agent = NPG(1, 1, -1.0, 1.0, cfg, CPU, 0)
    agent.value = lambda obs, time: 10 * obs[:, 0] + 12.5 * time * 8  # b(s, t), t = time * 8
    p = upstream_paths(0.0)
    batch = agent.prepare(p)
    np.testing.assert_allclose(batch.returns.numpy(), sum(UPSTREAM_RETURNS, []), rtol=1e-5)
    adv = np.array(sum(UPSTREAM_ADVANTAGES, []))
    assert batch.stats["advantage_mean"] == pytest.approx(adv.mean(), rel=1e-5)
    np.testing.assert_allclose(
        batch.advantages.numpy(), (adv - adv.mean()) / (adv.std() + 1e-6), rtol=1e-4, atol=1e-5
    )


def test_halt_value_at_the_halted_step_by_hand() -> None:
    # Path 0 halts at its 4th step (s = 3, reward 4 + 0); b(s, t) = 10 s + 12.5 t.
    gamma = 0.9
    v_last = 10 * 3 + 12.5 * 3  # the last kept state's value, mjrl's b[-1]
    by_value = {
        "bootstrap": 4.0 + gamma * v_last - v_last,  # upstream: bootstrap from b[-1]
        "absorbing": 4.0 - v_last,  # the MOReL paper: HALT is absorbing, value 0
    }
    for halt_value, expected in by_value.items():
        cfg = config(gamma=gamma, gae_lambda=0.8, value_time_scale=8)
        agent = NPG(1, 1, -1.0, 1.0, cfg, CPU, 0)
        agent.value = lambda obs, time: 10 * obs[:, 0] + 12.5 * time * 8
        p = upstream_paths(0.0, halt_value)
        assert p.terminal[0].item() == (halt_value == "absorbing")
        batch = agent.prepare(p)
        raw = (
            batch.advantages * (batch.stats["advantage_std"] + 1e-6) + batch.stats["advantage_mean"]
        )
        assert raw[3].item() == pytest.approx(expected, rel=1e-5)


def test_each_start_state_once_per_member_each_path_one_members_mean() -> None:
    # Member k moves s by k + 1 (a Gaussian with variance 4 that per-model paths ignore).
    def movers(obs: Tensor, act: Tensor) -> Prediction:
        mean = torch.stack([obs + 1, obs + 2, obs + 3])
        return Prediction(mean, torch.full_like(mean, 4.0), None, None)

    starts = torch.tensor([[0.0], [100.0]]).repeat(2, 1)  # 2 start states x elites [0, 2]
    member = torch.tensor([0, 2]).repeat_interleave(2)
    p = model_paths(
        movers,
        [0, 2],
        zero_policy,
        starts,
        6,
        state_reward,
        never,
        Pessimism(),
        "j-morel",
        gen(),
        path_member=member,
        halt_value="bootstrap",
        min_steps=5,
    )
    assert len(p) == 4 and p.lengths.tolist() == [6] * 4
    step = (p.obs[:, 1:6, 0] - p.obs[:, :5, 0]).unique(dim=1)
    assert step[:, 0].tolist() == [1.0, 1.0, 3.0, 3.0]  # one member per path, its mean


def test_paths_shorter_than_five_observations_are_dropped_as_upstream_counts() -> None:
    # Task termination on reaching s >= 3: from s0 = 0 the path's states are 0, 1, 2, 3 (four
    # observations upstream, which keeps the failing state): dropped; from s0 = -1 five: kept.
    def at_three(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        return next_obs[:, 0] >= 3.0

    p = model_paths(
        three_members,
        [0],
        zero_policy,
        torch.tensor([[0.0], [-1.0], [-100.0]]),
        8,
        state_reward,
        at_three,
        Pessimism(),
        "j-morel",
        gen(),
        path_member=torch.zeros(3, dtype=torch.long),
        halt_value="bootstrap",
        min_steps=5,
    )
    assert p.dropped == 1 and p.lengths.tolist() == [4, 8]
    assert p.terminal.tolist() == [True, False]  # without HALT a task termination is terminal
    assert p.statistics()["paths_dropped"] == pytest.approx(1 / 3)
