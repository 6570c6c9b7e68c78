"""Epistemic and aleatoric uncertainty, disagreement scales, dataset statistics, thresholds."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble, Prediction
from ombrl.models.uncertainty import (
    MOREL_VELOCITY_WEIGHT,
    PERCENTILES,
    aleatoric,
    dataset_statistics,
    dataset_uncertainty,
    disagreement_scale,
    epistemic,
    jacobian_row_norms,
    position_dims,
    summarize,
    threshold,
    uncertainty,
)

E, B, D = 5, 40, 4


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def prediction(mean: torch.Tensor, var: torch.Tensor | None) -> Prediction:
    return Prediction(next_obs_mean=mean, next_obs_var=var, reward_mean=None, reward_var=None)


def identical_members(seed: int = 0) -> torch.Tensor:
    """E x B x D means where every member predicts the same random next states."""
    return torch.randn(B, D, generator=gen(seed)).expand(E, B, D).clone()


def random_ensemble(probabilistic: bool, hidden: list[int], seed: int = 0) -> DynamicsEnsemble:
    """A small ensemble with non-trivial normalisers (so raw and normalised units differ)."""
    torch.manual_seed(seed)
    model = DynamicsEnsemble(D, 2, hidden, E, probabilistic, "swish", predict_reward=True)
    g = gen(seed + 1)
    model.set_normalizers(
        torch.randn(D + 2, generator=g),
        torch.rand(D + 2, generator=g) + 0.5,
        torch.randn(D + 1, generator=g) * 0.1,
        torch.rand(D + 1, generator=g) * 2 + 0.2,
    )
    return model.eval()


def random_dataset(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, D)).astype(np.float32)
    return Dataset(
        observations=obs,
        actions=rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=obs + 0.1,
        terminals=np.zeros(n, bool),
        timeouts=np.zeros(n, bool),
        episode_ids=np.zeros(n, np.int64),
        env_id="Hopper-v4",
    )


# Epistemic ---------------------------------------------------------------------------------


def test_epistemic_is_zero_when_members_agree_whatever_their_variance() -> None:
    var = torch.rand(E, B, D, generator=gen(1)) * 5
    u = epistemic(prediction(identical_members(), var))
    assert u.shape == (B,)
    assert torch.equal(u, torch.zeros(B))


@pytest.mark.parametrize("dim", [0, 3])
def test_epistemic_of_one_shifted_member_is_the_scaled_shift(dim: int) -> None:
    mean = identical_members()
    shift = torch.linspace(0.5, 3.0, B)
    mean[2, :, dim] += shift
    scale = torch.tensor([1.0, 0.3, 2.0, 0.02])
    np.testing.assert_allclose(epistemic(prediction(mean, None)), shift, rtol=1e-5)
    np.testing.assert_allclose(
        epistemic(prediction(mean, None), scale), shift * scale[dim], rtol=1e-5
    )
    # Without the shifted member the others agree again.
    assert torch.equal(epistemic(prediction(mean, None), members=[0, 1, 3, 4]), torch.zeros(B))


def test_epistemic_is_the_largest_pairwise_distance() -> None:
    mean = torch.randn(E, B, D, generator=gen(2))
    scale = torch.rand(D, generator=gen(3)) + 0.1
    x = (mean * scale).double().numpy()
    expected = [
        max(np.linalg.norm(x[i, b] - x[j, b]) for i in range(E) for j in range(E)) for b in range(B)
    ]
    np.testing.assert_allclose(epistemic(prediction(mean, None), scale), expected, rtol=1e-5)
    members = [0, 3, 4]
    subset = [
        max(np.linalg.norm(x[i, b] - x[j, b]) for i in members for j in members) for b in range(B)
    ]
    np.testing.assert_allclose(epistemic(prediction(mean, None), scale, members), subset, rtol=1e-5)


def test_epistemic_ignores_variance() -> None:
    mean = torch.randn(E, B, D, generator=gen(4))
    low = epistemic(prediction(mean, torch.full((E, B, D), 1e-3)))
    high = epistemic(prediction(mean, torch.rand(E, B, D, generator=gen(5)) * 100))
    assert torch.equal(low, high)
    assert (low > 0).all()


# Aleatoric ---------------------------------------------------------------------------------


def test_aleatoric_kinds_match_their_definitions() -> None:
    var = torch.rand(E, B, D, generator=gen(6)) * 3
    v = var.double().numpy()
    pred = prediction(torch.zeros(E, B, D), var)
    norm = [max(np.sqrt(v[m, b].sum()) for m in range(E)) for b in range(B)]
    largest = [v[:, b].max() for b in range(B)]
    np.testing.assert_allclose(aleatoric(pred, "max_norm"), norm, rtol=1e-6)
    np.testing.assert_allclose(aleatoric(pred, "max_var"), largest, rtol=1e-6)
    np.testing.assert_allclose(aleatoric(pred, "max_var", [1, 2]), v[1:3].max(axis=(0, 2)))


def test_aleatoric_responds_to_variance_not_to_disagreement() -> None:
    var = torch.rand(E, B, D, generator=gen(7)) + 0.1
    agree = prediction(identical_members(), var)
    disagree = prediction(torch.randn(E, B, D, generator=gen(8)) * 50, var)
    noisier = prediction(identical_members(), 4 * var)
    for kind in ("max_norm", "max_var"):
        assert torch.equal(aleatoric(agree, kind), aleatoric(disagree, kind))
    np.testing.assert_allclose(
        aleatoric(noisier, "max_norm"), 2 * aleatoric(agree, "max_norm"), rtol=1e-6
    )
    np.testing.assert_allclose(
        aleatoric(noisier, "max_var"), 4 * aleatoric(agree, "max_var"), rtol=1e-6
    )
    assert torch.equal(uncertainty(agree, "epistemic"), torch.zeros(B))
    assert (uncertainty(disagree, "epistemic") > 0).all()


def test_unknown_kinds_and_missing_variance_are_user_errors() -> None:
    pred = prediction(identical_members(), None)
    with pytest.raises(OmbrlError, match="probabilistic"):
        aleatoric(pred, "max_norm")
    with pytest.raises(OmbrlError, match="'std'"):
        uncertainty(pred, "std")
    with pytest.raises(OmbrlError, match="empty"):
        epistemic(pred, members=[])


# Disagreement scales -----------------------------------------------------------------------


def test_jacobian_scale_of_a_linear_ensemble_is_analytic() -> None:
    model = random_ensemble(probabilistic=True, hidden=[])
    obs = torch.randn(300, D, generator=gen(9))
    act = torch.rand(300, 2, generator=gen(10)) * 2 - 1
    # next = s + target_std * (W^T ((s, a) - mu) / sigma) + target_mean: J = I + T W_s^T S^-1.
    w = model.head.weight.detach()[:, :D, :D].double()  # E x in(s) x out(s) (means only)
    t = model.target_std[:D].double()
    s_inv = 1 / model.input_std[:D].double()
    a = torch.eye(D, dtype=torch.float64) + t[:, None] * w.transpose(1, 2) * s_inv[None, :]
    expected = 1 / a.square().sum(dim=2).mean(dim=0).sqrt()  # row norms, mean over members
    scale = disagreement_scale("jacobian", model, obs, act, num_samples=128)
    np.testing.assert_allclose(scale, expected, rtol=1e-5)
    members = [1, 3]
    subset = 1 / a[members].square().sum(dim=2).mean(dim=0).sqrt()
    np.testing.assert_allclose(
        disagreement_scale("jacobian", model, obs, act, members=members), subset, rtol=1e-5
    )
    assert not any(p.grad is not None for p in model.parameters())


def test_jacobian_row_norms_match_autograd_per_state() -> None:
    model = random_ensemble(probabilistic=False, hidden=[16, 16])
    obs = torch.randn(6, D, generator=gen(11))
    act = torch.rand(6, 2, generator=gen(12))
    rows = jacobian_row_norms(model, obs, act)
    assert rows.shape == (E, 6, D)
    for b in range(6):
        jac = torch.autograd.functional.jacobian(
            lambda s, b=b: model.predict(s[None], act[b : b + 1]).next_obs_mean[:, 0], obs[b]
        )  # E x D x D
        np.testing.assert_allclose(rows[:, b], jac.square().sum(dim=-1), rtol=1e-5, atol=1e-7)


def test_jacobian_subsample_is_seeded() -> None:
    model = random_ensemble(probabilistic=False, hidden=[16])
    obs = torch.randn(200, D, generator=gen(13)) * torch.tensor([1.0, 5.0, 0.1, 2.0])
    act = torch.rand(200, 2, generator=gen(14))
    first = disagreement_scale("jacobian", model, obs, act, num_samples=20, seed=3)
    again = disagreement_scale("jacobian", model, obs, act, num_samples=20, seed=3)
    other = disagreement_scale("jacobian", model, obs, act, num_samples=20, seed=4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_none_and_morel_scales() -> None:
    model = random_ensemble(probabilistic=False, hidden=[8])
    obs, act = torch.zeros(1, D), torch.zeros(1, 2)
    assert torch.equal(disagreement_scale("none", model, obs, act), torch.ones(D))
    morel = disagreement_scale("morel", model, obs, act, positions=3)
    assert torch.equal(morel, torch.tensor([1.0, 1.0, 1.0, MOREL_VELOCITY_WEIGHT]))
    for positions in (None, 0, D + 1):
        with pytest.raises(OmbrlError, match="position count"):
            disagreement_scale("morel", model, obs, act, positions=positions)
    with pytest.raises(OmbrlError, match="'jacobi'"):
        disagreement_scale("jacobi", model, obs, act)


def test_target_std_scale_measures_in_the_models_standardised_output_space() -> None:
    """With the `target_std` scale, u equals u of the network's own (standardised) outputs;
    its old name `normalized` fails naming it."""
    model = random_ensemble(probabilistic=True, hidden=[8])
    target_std = torch.tensor([0.5, 2.0, 4.0, 0.1, 3.0])  # the last is the reward's
    model.set_normalizers(torch.zeros(D + 2), torch.ones(D + 2), torch.zeros(D + 1), target_std)
    obs, act = torch.randn(B, D, generator=gen(1)), torch.randn(B, 2, generator=gen(2))
    scale = disagreement_scale("target_std", model, obs, act)
    torch.testing.assert_close(scale, 1 / target_std[:D])
    with pytest.raises(OmbrlError, match="'normalized' was renamed; use target_std"):
        disagreement_scale("normalized", model, obs, act)
    with torch.no_grad():
        pred = model.predict(obs, act)
        mean, logvar = model(model.normalize_inputs(obs, act).expand(E, -1, -1))
    raw = prediction(mean[..., :D], logvar[..., :D].exp())
    torch.testing.assert_close(epistemic(pred, scale), epistemic(raw), rtol=1e-4, atol=1e-6)
    for kind in ("max_norm", "max_var"):
        torch.testing.assert_close(
            uncertainty(pred, kind, scale), aleatoric(raw, kind), rtol=1e-4, atol=1e-6
        )
    # The scale weights the std: doubling it doubles max_norm and quadruples max_var.
    torch.testing.assert_close(
        aleatoric(raw, "max_norm", scale=torch.full((D,), 2.0)), 2 * aleatoric(raw, "max_norm")
    )
    torch.testing.assert_close(
        aleatoric(raw, "max_var", scale=torch.full((D,), 2.0)), 4 * aleatoric(raw, "max_var")
    )


@pytest.mark.parametrize(
    ("env_id", "task"),
    [
        ("Hopper-v5", "hopper"),
        ("Walker2d-v5", "walker2d"),
        ("HalfCheetah-v5", "halfcheetah"),
        ("InvertedPendulum-v5", "inverted_pendulum"),
    ],
)
def test_position_dims_are_the_observed_joint_positions(env_id: str, task: str) -> None:
    env = gym.make(env_id)
    try:
        obs_dim = env.observation_space.shape[0]
        # The observation is qpos (minus any excluded x) followed by all nv velocities.
        assert position_dims(task) == obs_dim - env.unwrapped.model.nv
    finally:
        env.close()
    with pytest.raises(OmbrlError, match="no position count"):
        position_dims("ant_maze")


# Dataset statistics ------------------------------------------------------------------------


def direct_uncertainties(model: DynamicsEnsemble, data: Dataset, scale: torch.Tensor) -> dict:
    """u of every transition from one full-batch prediction, pair by pair, in float64 (the
    scale weights the means and the stds)."""
    with torch.no_grad():
        pred = model.predict(torch.as_tensor(data.observations), torch.as_tensor(data.actions))
    mean = (pred.next_obs_mean * scale).double().numpy()
    var = (pred.next_obs_var * scale.square()).double().numpy()  # the scale weights the std
    n = len(data)
    pairs = [(i, j) for i in range(E) for j in range(i + 1, E)]
    return {
        "epistemic": np.max([np.linalg.norm(mean[i] - mean[j], axis=-1) for i, j in pairs], 0),
        "max_norm": np.sqrt(var.sum(-1)).max(0),
        "max_var": var.reshape(E, n, D).max(axis=(0, 2)),
    }


def test_dataset_statistics_match_a_direct_computation() -> None:
    model = random_ensemble(probabilistic=True, hidden=[32, 32])
    data = random_dataset(1000)
    scale = torch.tensor([1.0, 0.5, 0.02, 2.0])
    kinds = ["epistemic", "max_norm", "max_var"]
    values = dataset_uncertainty(model, data, kinds, batch_size=128, scale=scale)
    stats = dataset_statistics(model, data, kinds, batch_size=128, scale=scale)
    direct = direct_uncertainties(model, data, scale)
    for kind in kinds:
        assert values[kind].shape == (1000,)
        np.testing.assert_allclose(values[kind], direct[kind], rtol=1e-5)
        s = stats[kind]
        assert set(s) == {"mean", "std", "max", *(f"p{q:g}" for q in PERCENTILES)}
        assert all(isinstance(v, float) for v in s.values())
        assert s["p50"] <= s["p90"] <= s["p99"] <= s["p99.9"] <= s["max"]
        assert direct[kind].min() < s["mean"] < s["max"] and s["std"] > 0
        np.testing.assert_allclose(s["mean"], direct[kind].mean(), rtol=1e-5)
        np.testing.assert_allclose(s["std"], direct[kind].std(), rtol=1e-4)
        np.testing.assert_allclose(s["max"], direct[kind].max(), rtol=1e-5)
        np.testing.assert_allclose(s["p90"], np.percentile(direct[kind], 90), rtol=1e-5)
    # Batch size changes nothing but memory.
    whole = dataset_statistics(model, data, kinds, batch_size=1000, scale=scale)
    for kind in kinds:
        assert whole[kind] == pytest.approx(stats[kind], rel=1e-6)


def test_dataset_statistics_reject_what_the_model_cannot_give() -> None:
    model = random_ensemble(probabilistic=False, hidden=[8])
    data = random_dataset(10)
    assert dataset_statistics(model, data, ["epistemic"], 4)["epistemic"]["max"] > 0
    with pytest.raises(OmbrlError, match="probabilistic"):
        dataset_statistics(model, data, ["max_var"], 4)
    with pytest.raises(OmbrlError, match="aleatoric"):
        dataset_statistics(model, data, ["aleatoric"], 4)
    with pytest.raises(OmbrlError, match="batch_size"):
        dataset_statistics(model, data, ["epistemic"], 0)


# Thresholds --------------------------------------------------------------------------------


def test_threshold_rules_and_their_directions() -> None:
    u = np.random.default_rng(0).gamma(2.0, 1.5, size=5000)
    stats = summarize(u)
    assert threshold(stats, "max", 2.0) == pytest.approx(u.max() / 2)
    assert threshold(u, "meanstd", 1.0) == pytest.approx(u.mean() + u.std())
    assert threshold(u, "percentile", 90) == pytest.approx(np.percentile(u, 90))
    assert threshold(stats, "percentile", 99.9) == stats["p99.9"]

    def truncated(rule: str, beta: float) -> float:
        return float((u > threshold(stats, rule, beta)).mean())

    # max: larger beta truncates more; meanstd and percentile: larger beta truncates less.
    assert truncated("max", 1.0) == 0.0 < truncated("max", 2.0) < truncated("max", 4.0)
    assert truncated("meanstd", 0.5) > truncated("meanstd", 1.0) > truncated("meanstd", 2.0)
    assert truncated("percentile", 50) > truncated("percentile", 90) > truncated("percentile", 99)
    assert truncated("percentile", 90) == pytest.approx(0.10, abs=1e-3)


def test_threshold_user_errors() -> None:
    stats = summarize(np.arange(10.0))
    with pytest.raises(OmbrlError, match="p75"):
        threshold(stats, "percentile", 75)
    with pytest.raises(OmbrlError, match="positive"):
        threshold(stats, "max", 0)
    with pytest.raises(OmbrlError, match="0..100"):
        threshold(stats, "percentile", 150)
    with pytest.raises(OmbrlError, match="'median'"):
        threshold(stats, "median", 1)
    with pytest.raises(OmbrlError, match="no values"):
        summarize(np.array([]))
