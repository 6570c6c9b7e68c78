"""Model rollouts and the MOPO penalty, driven by hand-written predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble, Prediction
from ombrl.models.model_env import Pessimism, rollout
from ombrl.models.uncertainty import aleatoric as aleatoric_uncertainty
from ombrl.tasks import get_task

OBS, ACT, E = 3, 2, 4


def shifted_members(var_scale: float = 0.0, reward: bool = False):
    """Member m predicts `s' = s + m + 0.1 sum(a)`, variance `var_scale (m + 1) (1 + |s|)`."""

    def predict(obs: Tensor, act: Tensor) -> Prediction:
        m = torch.arange(E, dtype=torch.float32).view(E, 1, 1)
        mean = obs + m + 0.1 * act.sum(-1, keepdim=True)
        var = var_scale * (m + 1) * (1 + obs.abs()).expand(E, -1, -1) if var_scale else None
        return Prediction(
            next_obs_mean=mean,
            next_obs_var=var,
            reward_mean=mean[..., 0] * 10 if reward else None,
            reward_var=None,
        )

    return predict


def zero_policy(obs: Tensor) -> Tensor:
    return torch.zeros(obs.shape[0], ACT)


def sum_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return next_obs.sum(-1)


def never(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return torch.zeros(obs.shape[0], dtype=torch.bool)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


NONE = Pessimism()


def penalty(kind: str, lam: float) -> Pessimism:
    return Pessimism("penalty", kind, penalty_lambda=lam)


def test_uncertainty_kinds_match_their_definitions() -> None:
    var = torch.rand(E, 50, OBS, generator=gen()) * 3
    pred = Prediction(torch.zeros(E, 50, OBS), var, None, None)
    v = var.numpy().astype(np.float64)
    expected_norm = [max(np.sqrt(v[m, b].sum()) for m in range(E)) for b in range(50)]
    expected_var = [max(v[m, b, d] for m in range(E) for d in range(OBS)) for b in range(50)]
    np.testing.assert_allclose(aleatoric_uncertainty(pred, "max_norm"), expected_norm, rtol=1e-6)
    np.testing.assert_allclose(aleatoric_uncertainty(pred, "max_var"), expected_var, rtol=1e-6)


@pytest.mark.parametrize("kind", ["max_norm", "max_var"])
def test_uncertainty_grows_with_one_members_variance(kind: str) -> None:
    var = torch.full((E, 5, OBS), 0.1)
    base = aleatoric_uncertainty(Prediction(torch.zeros_like(var), var, None, None), kind)
    var2 = var.clone()
    var2[2, 3, 1] = 4.0  # one member, one sample, one dimension
    grown = aleatoric_uncertainty(Prediction(torch.zeros_like(var), var2, None, None), kind)
    assert grown[3] > base[3] + 1.0
    torch.testing.assert_close(grown[[0, 1, 2, 4]], base[[0, 1, 2, 4]])


def test_max_norm_and_max_var_rank_spread_and_peaked_variance_differently() -> None:
    spread = torch.full((1, 1, 4), 1.0)  # norm of std 2, max var 1
    peaked = torch.tensor([[[1.5, 0.0, 0.0, 0.0]]])  # norm of std 1.22, max var 1.5
    u = {
        kind: [
            aleatoric_uncertainty(Prediction(v, v, None, None), kind).item()
            for v in (spread, peaked)
        ]
        for kind in ("max_norm", "max_var")
    }
    assert u["max_norm"][0] > u["max_norm"][1]
    assert u["max_var"][0] < u["max_var"][1]


@pytest.mark.parametrize("kind", ["max_norm", "max_var"])
def test_penalty_lowers_rewards_by_exactly_lambda_u(kind: str) -> None:
    predict = shifted_members(var_scale=0.5)
    start = torch.randn(64, OBS, generator=gen(1))
    args = (predict, [0, 2, 3], zero_policy, start, 3, sum_reward, never)
    plain, _ = rollout(*args, penalty(kind, 0.0), "sampled", gen(7))
    penalised, stats = rollout(*args, penalty(kind, 2.5), "sampled", gen(7))
    # Same generator: same members and noise, so the same transitions.
    torch.testing.assert_close(penalised.next_obs, plain.next_obs)
    u = aleatoric_uncertainty(predict(plain.obs, plain.act), kind, [0, 2, 3])
    assert (u > 0).all()
    torch.testing.assert_close(plain.rew - penalised.rew, 2.5 * u)
    torch.testing.assert_close(plain.rew, sum_reward(plain.obs, plain.act, plain.next_obs))
    assert stats["rollout_uncertainty"] == pytest.approx(u.mean().item(), rel=1e-5)


def test_samples_come_from_elites_only_and_each_elite_is_used() -> None:
    start = torch.zeros(2000, OBS)
    batch, stats = rollout(
        shifted_members(), [1, 3], zero_policy, start, 1, sum_reward, never, NONE, "sampled", gen()
    )
    shifts = (batch.next_obs - batch.obs)[:, 0]
    assert set(shifts.unique().tolist()) == {1.0, 3.0}
    assert 0.4 < (shifts == 1.0).float().mean() < 0.6
    assert stats["rollout_length"] == 1.0


def test_probabilistic_samples_follow_the_predicted_variance() -> None:
    start = torch.zeros(20000, OBS)
    batch, _ = rollout(
        shifted_members(var_scale=1.0),
        [0],
        zero_policy,
        start,
        1,
        sum_reward,
        never,
        NONE,
        "sampled",
        gen(),
    )
    noise = batch.next_obs - batch.obs  # member 0: mean 0, variance 1 * (1 + 0)
    assert abs(noise.mean().item()) < 0.03
    assert noise.var().item() == pytest.approx(1.0, rel=0.05)


def test_rollouts_stop_at_terminal_states_and_never_continue_from_them() -> None:
    # Member 1 only: x grows by 1 per step; a sample terminates once x' > 3.5.
    start = torch.zeros(4, OBS)
    start[:, 0] = torch.tensor([0.0, 1.0, 2.0, 10.0])

    def past(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        return next_obs[:, 0] > 3.5

    batch, stats = rollout(
        shifted_members(), [1], zero_policy, start, 6, sum_reward, past, NONE, "sampled", gen()
    )
    # Steps before terminating: start 0 -> 4 (x' = 1, 2, 3, 4), 1 -> 3, 2 -> 2, 10 -> 1.
    firsts = batch.obs[:, 0]
    np.testing.assert_array_equal(
        np.sort(firsts.numpy()), np.sort([0, 1, 2, 3, 1, 2, 3, 2, 3, 10.0])
    )
    assert len(batch) == 10 and stats["rollout_length"] == 2.5 and stats["rollout_terminal"] == 1.0
    assert (batch.terminal == (batch.next_obs[:, 0] > 3.5).float()).all()
    # No transition starts from a state that was reached by a terminal transition.
    terminal_states = batch.next_obs[batch.terminal.bool()]
    assert not (batch.obs[:, None, :] == terminal_states[None]).all(-1).any()


def test_non_finite_predictions_are_dropped_and_stop() -> None:
    def blows_up(obs: Tensor, act: Tensor) -> Prediction:
        mean = (obs + 1).expand(E, -1, -1).clone()
        mean[:, obs[:, 0] >= 1.5] = float("nan")
        return Prediction(mean, None, None, None)

    start = torch.zeros(3, OBS)
    start[0, 0] = 2.0
    batch, stats = rollout(
        blows_up, [0], zero_policy, start, 4, sum_reward, never, NONE, "sampled", gen()
    )
    # Sample 0 blows up at once; the others step 0 -> 1 -> 2, then blow up.
    assert torch.isfinite(batch.next_obs).all() and torch.isfinite(batch.rew).all()
    assert sorted(batch.obs[:, 0].tolist()) == [0.0, 0.0, 1.0, 1.0]
    assert stats["rollout_terminal"] == 0.0


def test_model_reward_head_is_used_without_a_task_reward() -> None:
    start = torch.randn(32, OBS, generator=gen(2))
    batch, _ = rollout(
        shifted_members(reward=True),
        [2],
        zero_policy,
        start,
        2,
        None,
        never,
        NONE,
        "sampled",
        gen(),
    )
    torch.testing.assert_close(batch.rew, 10 * batch.next_obs[:, 0])
    with pytest.raises(OmbrlError, match="reward"):
        rollout(shifted_members(), [2], zero_policy, start, 2, None, never, NONE, "sampled", gen())


def test_penalty_needs_a_probabilistic_model_and_a_known_kind() -> None:
    start = torch.zeros(4, OBS)
    args = (zero_policy, start, 2, sum_reward, never)
    batch, _ = rollout(shifted_members(), [0], *args, NONE, "sampled", gen())
    assert len(batch) == 8
    with pytest.raises(OmbrlError, match="probabilistic"):
        rollout(shifted_members(), [0], *args, penalty("max_norm", 1.0), "sampled", gen())
    with pytest.raises(OmbrlError, match="max_std"):
        penalty("max_std", 1.0)
    with pytest.raises(OmbrlError, match="reward_source"):
        rollout(shifted_members(), [0], *args, NONE, "median", gen())


def test_same_generator_seed_gives_identical_rollouts() -> None:
    start = torch.randn(100, OBS, generator=gen(3))
    args = (
        shifted_members(var_scale=0.3),
        [0, 1, 3],
        zero_policy,
        start,
        4,
        sum_reward,
        never,
        penalty("max_norm", 1.0),
        "sampled",
    )
    first, _ = rollout(*args, gen(5))
    again, _ = rollout(*args, gen(5))
    other, _ = rollout(*args, gen(6))
    torch.testing.assert_close(first.next_obs, again.next_obs, rtol=0, atol=0)
    assert not torch.equal(first.next_obs, other.next_obs)


def test_rollout_with_a_real_ensemble_and_task() -> None:
    """Shapes and termination with `DynamicsEnsemble.predict` and InvertedPendulum's functions."""
    task = get_task("InvertedPendulum-v5")
    torch.manual_seed(0)
    model = DynamicsEnsemble(task.obs_dim, task.act_dim, [16], 3, True, "swish", False).eval()
    model.elites = [0, 2]
    start = torch.randn(500, task.obs_dim, generator=gen()) * 0.05

    def policy(obs: Tensor) -> Tensor:
        return torch.full((obs.shape[0], 1), 3.0)

    batch, stats = rollout(
        model.predict,
        model.elites,
        policy,
        start,
        5,
        task.reward,
        task.terminal,
        penalty("max_var", 1.0),
        "sampled",
        gen(),
    )
    assert batch.obs.shape[1] == task.obs_dim and batch.act.shape == (len(batch), 1)
    assert 500 <= len(batch) <= 2500
    assert (batch.terminal == task.terminal(batch.obs, batch.act, batch.next_obs).float()).all()
    assert stats["rollout_uncertainty"] > 0
    # The penalty brings every reward below the task's 1 (or 0 at termination).
    assert (batch.rew < task.reward(batch.obs, batch.act, batch.next_obs)).all()


def spread_members(obs: Tensor, act: Tensor) -> Prediction:
    """Members agree at x = 0 and disagree in proportion to |x|: member m predicts
    `s' = s + m |x| e_0`, with variance 0.1 everywhere (so only disagreement varies)."""
    m = torch.arange(E, dtype=torch.float32).view(E, 1)
    mean = obs.expand(E, -1, -1).clone()
    mean[..., 0] += m * obs[:, 0].abs()
    return Prediction(mean, torch.full_like(mean, 0.1), None, None)


@pytest.mark.parametrize("halt_reward", ["replace", "add"])
def test_partitioning_marks_exactly_the_uncertain_transitions_terminal(halt_reward: str) -> None:
    # Elites 0 and 3 disagree by 3 |x|: u > 1.5 exactly where |x| > 0.5.
    start = torch.linspace(-1, 1, 41).unsqueeze(1).repeat(1, OBS)
    halt = Pessimism(
        "partitioning", "epistemic", threshold=1.5, halt_reward=halt_reward, halt_penalty=-7.0
    )
    batch, stats = rollout(
        spread_members, [0, 3], zero_policy, start, 1, sum_reward, never, halt, "sampled", gen()
    )
    plain, _ = rollout(
        spread_members, [0, 3], zero_policy, start, 1, sum_reward, never, NONE, "sampled", gen()
    )
    uncertain = 3 * batch.obs[:, 0].abs() > 1.5
    assert 0 < int(uncertain.sum()) < len(batch)
    assert torch.equal(batch.terminal.bool(), uncertain)
    expected = torch.full_like(plain.rew, -7.0) + (plain.rew if halt_reward == "add" else 0)
    torch.testing.assert_close(batch.rew[uncertain], expected[uncertain])
    torch.testing.assert_close(batch.rew[~uncertain], plain.rew[~uncertain])
    assert stats["rollout_halted"] == pytest.approx(uncertain.float().mean().item())


def test_halted_samples_never_continue() -> None:
    # x doubles each step under member 1 (|x| added), so u grows until HALT stops the sample.
    start = torch.full((1, OBS), 0.1)
    halt = Pessimism("partitioning", "epistemic", threshold=0.5, halt_penalty=0.0)
    batch, stats = rollout(
        spread_members, [0, 1], zero_policy, start, 10, sum_reward, never, halt, "sampled", gen()
    )
    assert batch.terminal[-1] == 1 and (batch.terminal[:-1] == 0).all()
    assert len(batch) < 10 and stats["rollout_terminal"] == stats["rollout_halted"] == 1.0


def test_epistemic_penalty_follows_disagreement_not_noise() -> None:
    start = torch.linspace(-1, 1, 21).unsqueeze(1).repeat(1, OBS)
    args = (spread_members, [0, 2], zero_policy, start, 1, sum_reward, never)
    plain, _ = rollout(*args, NONE, "mean", gen(3))
    penalised, _ = rollout(
        *args, Pessimism("penalty", "epistemic", penalty_lambda=0.5), "mean", gen(3)
    )
    # Elites 0 and 2 disagree by 2 |x| in dimension 0; the constant noise adds nothing.
    torch.testing.assert_close(plain.rew - penalised.rew, 0.5 * 2 * plain.obs[:, 0].abs())


def test_mean_reward_averages_the_elites_without_sampling_noise() -> None:
    start = torch.randn(50, OBS, generator=gen(4))
    args = (shifted_members(var_scale=1.0), [1, 3], zero_policy, start, 1, sum_reward, never, NONE)
    mean, _ = rollout(*args, "mean", gen(1))
    again, _ = rollout(*args, "mean", gen(2))
    # Members 1 and 3 shift every dimension by 1 and 3: the mean reward is sum(s) + 2 OBS.
    torch.testing.assert_close(mean.rew, start.sum(-1) + 2 * OBS)
    torch.testing.assert_close(again.rew, mean.rew)
    sampled, _ = rollout(*args, "sampled", gen(1))
    torch.testing.assert_close(sampled.rew, sampled.next_obs.sum(-1))
    assert not torch.allclose(sampled.rew, mean.rew)
