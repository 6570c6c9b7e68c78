"""Fitting: learning on known systems and real MuJoCo data, holdout, early stopping, elites."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.models.fit import (
    FitConfig,
    bootstrap_indices,
    clip_grad_norm_per_member,
    epoch_order,
    fit_ensemble,
    split_holdout,
    train_step,
)

CPU = torch.device("cpu")


BASE_CFG = FitConfig(
    fit_epochs=30,
    batch_size=64,
    lr=3e-3,
    weight_decay=0.0,
    holdout_ratio=0.2,
    holdout_by="transition",
    patience=0,
    scheduler_gamma=None,
    bootstrap=False,
    batch_order="shared",
    snapshot="mse",
    num_elites=2,
    normalization="std",
    grad_clip=None,
    compile=False,
)


def make_dataset(
    obs: np.ndarray,
    act: np.ndarray,
    next_obs: np.ndarray,
    rewards: np.ndarray | None = None,
    episode_ids: np.ndarray | None = None,
) -> Dataset:
    n = len(obs)
    return Dataset(
        observations=obs.astype(np.float32),
        actions=act.astype(np.float32),
        rewards=np.zeros(n, np.float32) if rewards is None else rewards.astype(np.float32),
        next_observations=next_obs.astype(np.float32),
        terminals=np.zeros(n, bool),
        timeouts=np.zeros(n, bool),
        episode_ids=np.arange(n) // 50 if episode_ids is None else episode_ids,
        env_id="synthetic",
    )


def linear_system(seed: int, n: int, noise: bool = False):
    """s' = A s + B a (+ state-dependent Gaussian noise when `noise`), and its noise std."""
    rng = np.random.default_rng(seed)
    a_mat = np.random.default_rng(100).normal(size=(3, 3)) * 0.4
    b_mat = np.random.default_rng(101).normal(size=(3, 2))
    obs = rng.normal(size=(n, 3))
    act = rng.uniform(-1, 1, size=(n, 2))
    next_obs = obs @ a_mat.T + act @ b_mat.T
    std = 0.05 + 0.2 * np.abs(obs[:, :1]) * np.ones((1, 3))
    if noise:
        next_obs = next_obs + std * rng.normal(size=next_obs.shape)
    return obs, act, next_obs, std


def make_model(probabilistic: bool = False, members: int = 3, reward: bool = False, **kw):
    torch.manual_seed(0)
    hidden = kw.pop("hidden", [64, 64])
    return DynamicsEnsemble(3, 2, hidden, members, probabilistic, "swish", reward, **kw)


def test_deterministic_ensemble_fits_linear_system():
    obs, act, next_obs, _ = linear_system(0, 3000)
    reward = obs @ np.array([1.0, -2.0, 0.5]) + act[:, 0]
    model = make_model(reward=True)
    fit_ensemble(model, make_dataset(obs, act, next_obs, reward), BASE_CFG, 0, CPU, progress=False)
    t_obs, t_act, t_next, _ = linear_system(1, 1000)
    t_reward = t_obs @ np.array([1.0, -2.0, 0.5]) + t_act[:, 0]
    with torch.no_grad():
        pred = model.predict(torch.tensor(t_obs), torch.tensor(t_act))
    delta_var = (t_next - t_obs).var(axis=0)
    err = ((pred.next_obs_mean.numpy() - t_next) ** 2).mean(axis=1) / delta_var
    assert err.max() < 1e-3
    reward_err = ((pred.reward_mean.numpy() - t_reward) ** 2).mean(axis=1) / t_reward.var()
    assert reward_err.max() < 1e-3


def test_probabilistic_variance_is_calibrated():
    obs, act, next_obs, _ = linear_system(2, 4000, noise=True)
    model = make_model(probabilistic=True, members=2)
    cfg = dataclasses.replace(BASE_CFG, fit_epochs=40, bootstrap=True, lr=2e-3)
    data = make_dataset(obs, act, next_obs)
    result = fit_ensemble(model, data, cfg, 0, CPU, progress=False, track_training=True)
    # The logged calibration agrees: mean z^2 near 1, about 68% inside one predicted sigma.
    last = result.history[-1]
    for name in ("holdout_z2", "holdout_z2_ensemble", "holdout_z2_m0", "holdout_z2_m1"):
        assert 0.7 < last[name] < 1.5, name
    for name in ("holdout_within_1sigma", "holdout_within_1sigma_ensemble"):
        assert 0.6 < last[name] < 0.77, name
    # The soft log-variance bounds are parameters that training moved from their initial values.
    assert (model.max_logvar < 0.45).all() and (model.min_logvar > -9.95).all()
    t_obs, t_act, t_next, t_std = linear_system(3, 2000, noise=True)
    with torch.no_grad():
        pred = model.predict(torch.tensor(t_obs), torch.tensor(t_act))
    z2 = (pred.next_obs_mean.numpy() - t_next) ** 2 / pred.next_obs_var.numpy()
    assert 0.7 < z2.mean() < 1.5
    # The noise grows with |s0|: the predicted std must follow it, not be one global value.
    ratio = np.sqrt(pred.next_obs_var.numpy()).mean(axis=0) / t_std
    assert 0.7 < np.median(ratio) < 1.4


def collect_inverted_pendulum(seed: int, steps: int) -> Dataset:
    """Noisy stabilising controller mixed with uniform random actions, 100-step episodes."""
    env = gym.make("InvertedPendulum-v5", max_episode_steps=100)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc", "ep")}
    episode = 0
    obs, _ = env.reset(seed=seed)
    noise = 0.5
    while len(rows["obs"]) < steps:
        if rng.random() < 0.3:
            action = rng.uniform(-3, 3, size=1)
        else:
            action = np.clip([obs @ np.array([1.0, 5.0, 1.0, 1.0]) + rng.normal(0, noise)], -3, 3)
        next_obs, reward, term, trunc, _ = env.step(action.astype(np.float32))
        for key, value in zip(
            rows, (obs, action, reward, next_obs, term, trunc, episode), strict=True
        ):
            rows[key].append(value)
        obs = next_obs
        if term or trunc:
            episode += 1
            noise = rng.choice([0.2, 1.0, 2.0])
            obs, _ = env.reset()
    env.close()
    return Dataset(
        observations=np.array(rows["obs"], np.float32),
        actions=np.array(rows["act"], np.float32),
        rewards=np.array(rows["rew"], np.float32),
        next_observations=np.array(rows["next"], np.float32),
        terminals=np.array(rows["term"]),
        timeouts=np.array(rows["trunc"]),
        episode_ids=np.array(rows["ep"]),
        env_id="InvertedPendulum-v5",
    )


def test_mujoco_ensemble_beats_mean_delta_tenfold():
    train = collect_inverted_pendulum(0, 5000)
    test = collect_inverted_pendulum(1, 1000)
    torch.manual_seed(0)
    model = DynamicsEnsemble(4, 1, [64, 64], 3, False, "swish", False)
    cfg = dataclasses.replace(BASE_CFG, fit_epochs=25, holdout_by="trajectory", patience=5)
    fit_ensemble(model, train, cfg, 0, CPU, progress=False)
    with torch.no_grad():
        pred = model.predict(torch.tensor(test.observations), torch.tensor(test.actions))
    model_mse = ((pred.next_obs_mean.mean(0).numpy() - test.next_observations) ** 2).mean()
    mean_delta = (train.next_observations - train.observations).mean(axis=0)
    baseline_mse = ((test.observations + mean_delta - test.next_observations) ** 2).mean()
    assert model_mse * 10 < baseline_mse


def test_holdout_by_trajectory_never_splits_an_episode():
    lengths = np.random.default_rng(0).integers(1, 40, size=60)
    episode_ids = np.repeat(np.arange(60), lengths)
    for seed in range(5):
        train, hold = split_holdout(
            episode_ids, 0.25, "trajectory", torch.Generator().manual_seed(seed)
        )
        assert not set(episode_ids[train]) & set(episode_ids[hold])
        assert sorted(np.concatenate([train, hold])) == list(range(len(episode_ids)))
        assert 0.25 * len(episode_ids) <= len(hold) < 0.25 * len(episode_ids) + lengths.max()


def test_holdout_by_transition_and_errors():
    ids = np.arange(100) // 10
    train, hold = split_holdout(ids, 0.3, "transition", torch.Generator().manual_seed(0))
    assert len(hold) == 30 and len(train) == 70 and not set(train) & set(hold)
    _, hold_again = split_holdout(ids, 0.3, "transition", torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(hold, hold_again)
    with pytest.raises(OmbrlError, match="holdout_by"):
        split_holdout(ids, 0.3, "episode", torch.Generator())
    with pytest.raises(OmbrlError, match="2 episodes"):
        split_holdout(np.zeros(10, int), 0.3, "trajectory", torch.Generator())
    for by in ("transition", "trajectory"):
        train, hold = split_holdout(ids, 0.0, by, torch.Generator().manual_seed(0))
        assert list(train) == list(range(100)) and len(hold) == 0


def test_normalizers_come_from_the_training_split_only():
    obs, act, next_obs, _ = linear_system(4, 1000)
    episode_ids = np.arange(1000) // 100
    obs = obs + episode_ids[:, None]  # episodes differ, so the split changes the statistics
    data = make_dataset(obs, act, next_obs, episode_ids=episode_ids)
    model = make_model()
    cfg = dataclasses.replace(BASE_CFG, fit_epochs=1, holdout_by="trajectory", normalization="mad")
    result = fit_ensemble(model, data, cfg, 0, CPU, progress=False)
    train = np.setdiff1d(np.arange(1000), result.holdout_indices)
    inputs = np.concatenate([obs, act], axis=1)[train]
    mad = np.abs(inputs - inputs.mean(0)).mean(0)
    np.testing.assert_allclose(model.input_mean.numpy(), inputs.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.input_std.numpy(), mad, rtol=1e-5)
    assert np.abs(model.input_mean.numpy()[:3] - obs.mean(0)).max() > 0.1


def test_early_stopping_restores_best_snapshots_and_picks_elites():
    rng = np.random.default_rng(5)
    obs, act = rng.normal(size=(600, 3)), rng.normal(size=(600, 2))
    next_obs = obs + rng.normal(size=(600, 3))  # pure noise: holdout MSE cannot keep improving
    model = make_model(members=4, hidden=[128, 128])
    cfg = dataclasses.replace(BASE_CFG, fit_epochs=200, batch_size=32, patience=3, num_elites=2)
    seen: list[dict] = []
    result = fit_ensemble(
        model, make_dataset(obs, act, next_obs), cfg, 0, CPU, on_epoch=seen.append, progress=False
    )
    assert result.epochs_run < 50
    assert seen == result.history and len(seen) == result.epochs_run
    last = result.history[-1]
    # No member improved by > 1% in the last `patience` epochs.
    assert all(last[f"holdout_mse_m{m}"] > 0.99 * result.holdout_mse[m] for m in range(4))
    assert all(result.epochs_run - epoch >= 3 for epoch in result.best_epoch)

    # Recompute each restored member's holdout MSE independently, in normalised units.
    hold = result.holdout_indices
    with torch.no_grad():
        pred = model.predict(torch.tensor(obs[hold]), torch.tensor(act[hold]))
    err = (pred.next_obs_mean - torch.tensor(next_obs[hold])) / model.target_std
    mse = err.square().mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(mse, result.holdout_mse, rtol=1e-4)
    for m, epoch in enumerate(result.best_epoch):
        assert result.history[epoch - 1][f"holdout_mse_m{m}"] == pytest.approx(mse[m], rel=1e-4)
    assert result.elites == list(np.argsort(mse)[:2]) == model.elites


def test_bootstrap_indices_differ_per_member():
    g = torch.Generator().manual_seed(0)
    base = bootstrap_indices(5, 400, g)
    assert base.shape == (5, 400) and 0 <= base.min() and base.max() < 400
    assert all(not torch.equal(base[0], base[m]) for m in range(1, 5))
    assert all(len(torch.unique(row)) < 400 for row in base)  # drawn with replacement
    order = epoch_order(base, 5, 400, True, g)
    assert torch.equal(order.sort(dim=1).values, base.sort(dim=1).values)
    assert not torch.equal(order, base)
    shared = epoch_order(None, 5, 400, False, g)
    assert shared.shape == (1, 400) and torch.equal(shared.sort().values[0], torch.arange(400))


def test_per_member_order_gives_each_member_other_batches_of_the_same_data():
    g = torch.Generator().manual_seed(0)
    order = epoch_order(None, 4, 300, True, g)
    assert order.shape == (4, 300)
    for m in range(4):  # every member sees every row once per epoch ...
        assert torch.equal(order[m].sort().values, torch.arange(300))
    first = [set(order[m, :32].tolist()) for m in range(4)]  # ... in minibatches of its own
    assert all(first[0] != first[m] for m in range(1, 4))
    assert not torch.equal(order, epoch_order(None, 4, 300, True, g))  # a new order each epoch
    # Bootstrap with a shared order: one permutation of the positions for every member's rows.
    base = torch.arange(4 * 300).reshape(4, 300)  # distinct rows: position = value % 300
    shared = epoch_order(base, 4, 300, False, g)
    assert torch.equal(shared % 300, (shared[0] % 300).expand(4, -1))
    assert torch.equal(shared.sort(dim=1).values, base)


@pytest.mark.parametrize(
    ("bootstrap", "batch_order"),
    [(False, "shared"), (False, "per_member"), (True, "shared"), (True, "per_member")],
)
def test_identical_members_stay_identical_only_with_shared_batches(bootstrap, batch_order):
    obs, act, next_obs, _ = linear_system(6, 500)
    model = make_model(members=3, hidden=[32])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p[:1].clone().expand_as(p))
    cfg = dataclasses.replace(BASE_CFG, fit_epochs=3, bootstrap=bootstrap, batch_order=batch_order)
    fit_ensemble(model, make_dataset(obs, act, next_obs), cfg, 0, CPU, progress=False)
    weight = model.head.weight
    same = torch.allclose(weight[0], weight[1], atol=1e-6)
    assert same == (not bootstrap and batch_order == "shared")


def noise_system(seed: int, n: int):
    """s' = s + noise whose std grows with |s0| (0.05 to ~3): the mean (s' - s = 0) is learned
    in the first epoch, the variance takes many more."""
    rng = np.random.default_rng(seed)
    obs, act = rng.normal(size=(n, 3)), rng.uniform(-1, 1, size=(n, 2))
    std = 0.05 + np.abs(obs[:, :1]) * np.ones((1, 3))
    return obs, act, obs + std * rng.normal(size=(n, 3))


@pytest.mark.slow
def test_nll_snapshot_is_calibrated_where_the_mse_snapshot_is_not():
    obs, act, next_obs = noise_system(1, 1500)
    data = make_dataset(obs, act, next_obs)
    t_obs, t_act, t_next = noise_system(11, 4000)
    noise = np.abs(t_obs[:, 0])
    runs = {}
    for snapshot in ("mse", "nll"):
        model = make_model(probabilistic=True, members=2)
        cfg = dataclasses.replace(BASE_CFG, fit_epochs=20, snapshot=snapshot)
        result = fit_ensemble(model, data, cfg, 0, CPU, progress=False)
        with torch.no_grad():
            pred = model.predict(torch.tensor(t_obs), torch.tensor(t_act))
        z2 = (pred.next_obs_mean.numpy() - t_next) ** 2 / pred.next_obs_var.numpy()
        low, high = z2[:, noise < 0.3].mean(), z2[:, noise > 1].mean()
        runs[snapshot] = (result, low, high)
    (mse, mse_low, mse_high), (nll, nll_low, nll_high) = runs.values()
    # The snapshot choice changes what is kept, not how the members train.
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in mse.history] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in nll.history
    ]
    # MSE stops improving by 1% after the first epochs: its members keep a variance head that
    # has hardly trained, off by a factor of 3 or more on low- and high-noise states alike.
    assert max(mse.best_epoch) <= 3 and min(nll.best_epoch) >= 8
    assert all(abs(mse.holdout[f"holdout_z2_m{m}"] - 1) > 0.15 for m in range(2))
    assert mse_low < 0.3 and mse_high > 2
    # NLL keeps training the variance: calibrated on the holdout and on fresh data, per noise level.
    for name in ("holdout_z2", "holdout_z2_m0", "holdout_z2_m1", "holdout_z2_ensemble"):
        assert abs(nll.holdout[name] - 1) < 0.1, name
    assert abs(nll.holdout["holdout_within_1sigma"] - 0.683) < 0.05
    assert 0.5 < nll_low < 1.5 and 0.7 < nll_high < 1.5
    assert nll.holdout["holdout_nll"] < mse.holdout["holdout_nll"] - 0.3


def test_last_snapshot_keeps_the_final_weights_exactly():
    rng = np.random.default_rng(5)
    obs, act = rng.normal(size=(400, 3)), rng.normal(size=(400, 2))
    data = make_dataset(obs, act, obs + rng.normal(size=(400, 3)))  # noise: MSE soon stalls
    kept = {}
    for snapshot in ("last", "mse"):
        model = make_model(members=2, hidden=[32])
        final: dict = {}

        def remember(_row: dict, model=model, final=final) -> None:
            final.update({k: v.clone() for k, v in model.state_dict().items()})

        cfg = dataclasses.replace(BASE_CFG, fit_epochs=6, snapshot=snapshot)
        result = fit_ensemble(model, data, cfg, 0, CPU, on_epoch=remember, progress=False)
        kept[snapshot] = [torch.equal(v, final[k]) for k, v in model.state_dict().items()]
        if snapshot == "last":
            assert result.best_epoch == [6, 6]
            last_row = result.history[-1]
            assert all(
                result.holdout[f"holdout_mse_m{m}"] == last_row[f"holdout_mse_m{m}"]
                for m in range(2)
            )
    assert all(kept["last"])
    assert not all(kept["mse"])  # the mse choice restored an earlier epoch here


def test_same_seed_same_result_and_different_seed_differs():
    obs, act, next_obs, _ = linear_system(7, 600)
    data = make_dataset(obs, act, next_obs)
    cfg = dataclasses.replace(
        BASE_CFG,
        fit_epochs=4,
        bootstrap=True,
        scheduler_gamma=0.9,
        grad_clip=1.0,
        weight_decay=1e-4,
    )
    runs = []
    for seed in (3, 3, 4):
        model = make_model(probabilistic=True)
        result = fit_ensemble(model, data, cfg, seed, CPU, progress=False)
        history = [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]
        runs.append((model.state_dict(), history, result.elites))
    (s1, h1, e1), (s2, h2, e2), (s3, h3, _) = runs
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert h1 == h2 and e1 == e2
    assert h1 != h3 and not torch.equal(s1["head.weight"], s3["head.weight"])
    assert h1[1]["lr"] == pytest.approx(h1[0]["lr"] * 0.9)


def test_compiled_loss_trains_like_the_eager_one_and_reproducibly():
    """`compile: true` changes how the loss runs, not what it computes: 3 epochs (a last
    minibatch of another size included) end at the eager run's weights to float tolerance, and
    two compiled runs agree exactly."""
    obs, act, next_obs, _ = linear_system(9, 500)
    data = make_dataset(obs, act, next_obs)
    cfg = dataclasses.replace(BASE_CFG, fit_epochs=3, weight_decay=[1e-4, 1e-4, 1e-4])
    states = []
    torch._dynamo.reset()
    for compiled in (False, True, True):
        model = make_model(probabilistic=True)
        fit_ensemble(
            model, data, dataclasses.replace(cfg, compile=compiled), 0, CPU, progress=False
        )
        states.append(model.state_dict())
    eager, first, second = states
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert all(torch.equal(first[k], second[k]) for k in first)
    for key in eager:
        torch.testing.assert_close(first[key], eager[key], rtol=1e-4, atol=1e-5)
    assert not torch.equal(eager["head.weight"], make_model(probabilistic=True).head.weight)


def test_probabilistic_history_has_nll_columns():
    obs, act, next_obs, _ = linear_system(8, 300)
    model = make_model(probabilistic=True, members=2)
    cfg = dataclasses.replace(BASE_CFG, fit_epochs=2, num_elites=1)
    result = fit_ensemble(model, make_dataset(obs, act, next_obs), cfg, 0, CPU, progress=False)
    row = result.history[0]
    for key in ("train_nll", "holdout_nll", "holdout_nll_m1", "holdout_mse_ensemble"):
        assert np.isfinite(row[key])
    assert len(result.elites) == 1


def test_clip_grad_norm_per_member_leaves_small_gradients_alone():
    p = torch.nn.Parameter(torch.zeros(3, 2, 2))
    q = torch.nn.Parameter(torch.zeros(3, 1, 2))
    p.grad = torch.tensor([[[3.0, 0], [0, 0]], [[0.1, 0], [0, 0]], [[0, 0], [0, 0]]])
    q.grad = torch.tensor([[[4.0, 0]], [[0.0, 0]], [[0, 1.0]]])
    clip_grad_norm_per_member([p, q], 1.0)
    norms = (p.grad.square().sum(dim=(1, 2)) + q.grad.square().sum(dim=(1, 2))).sqrt()
    np.testing.assert_allclose(norms.numpy(), [1.0, 0.1, 1.0], rtol=1e-5)
    assert p.grad[0, 0, 0] / q.grad[0, 0, 0] == pytest.approx(0.75)  # direction kept


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"holdout_by": "episode"}, "holdout_by"),
        ({"weight_decay": [1e-4, 1e-4]}, "weight_decay"),
        ({"num_elites": 4}, "num_elites"),
        ({"holdout_ratio": 1.0}, "holdout_ratio"),
        ({"normalization": "minmax"}, r"^normalization: 'minmax' is not one of \['std', 'mad'"),
        ({"snapshot": "nll"}, "snapshot: 'nll' needs a probabilistic ensemble"),
        ({"batch_order": "random"}, "batch_order"),
        # Without a holdout nothing can pick an epoch, stop early or rank members.
        ({"holdout_ratio": 0.0}, "^snapshot: 'mse' picks an epoch by a holdout metric"),
        (
            {"holdout_ratio": 0.0, "snapshot": "last", "patience": 3},
            "^patience: 3 stops on a holdout metric",
        ),
        (
            {"holdout_ratio": 0.0, "snapshot": "last", "num_elites": 2},
            r"^num_elites: 2 ranks members by holdout MSE, .*use num_models \(3\)$",
        ),
    ],
)
def test_bad_config_raises_ombrl_error(change, match):
    obs, act, next_obs, _ = linear_system(9, 100)
    with pytest.raises(OmbrlError, match=match):
        fit_ensemble(
            make_model(),
            make_dataset(obs, act, next_obs),
            dataclasses.replace(BASE_CFG, **change),
            0,
            CPU,
            progress=False,
        )


def count_forward_rows(model: DynamicsEnsemble) -> list[int]:
    """Rows (B of E x B x in) of every forward call of `model`, appended as they happen."""
    rows: list[int] = []
    model.register_forward_hook(lambda _module, args, _out: rows.append(args[0].shape[1]))
    return rows


def test_costly_metrics_only_with_track_training_and_no_extra_pass_without():
    obs, act, next_obs, _ = linear_system(10, 1000, noise=True)
    data = make_dataset(obs, act, next_obs)
    cheap = ("train_mse", "train_nll_m2", "holdout_mse_ensemble", "holdout_nll_ensemble")
    costly = ("full_mse_m0", "full_mse_ensemble", "full_nll_ensemble", "holdout_z2_ensemble")
    runs = {}
    for track in (False, True):
        model = make_model(probabilistic=True)
        rows = count_forward_rows(model)
        cfg = dataclasses.replace(BASE_CFG, fit_epochs=3)
        result = fit_ensemble(model, data, cfg, 0, CPU, progress=False, track_training=track)
        runs[track] = (rows, result.history, model.state_dict())
        assert all(name in row for row in result.history for name in cheap)
        assert all((name in row) == track for row in result.history for name in costly)

    # 800 training rows in batches of 64, 200 holdout rows in one evaluation chunk.
    (plain_rows, plain, plain_state), (tracked_rows, tracked, tracked_state) = runs.values()
    # Training batches + holdout each epoch, and one holdout pass of the kept model at the end.
    assert plain_rows == 3 * ([64] * 12 + [32] + [200]) + [200]
    assert tracked_rows == 3 * ([64] * 12 + [32] + [200, 800]) + [200]  # + the train split
    # The extra pass observes: weights and every shared metric are the same.
    assert all(torch.equal(plain_state[k], tracked_state[k]) for k in plain_state)
    for row, tracked_row in zip(plain, tracked, strict=True):
        assert {k: v for k, v in tracked_row.items() if k in row and k != "seconds"} == {
            k: v for k, v in row.items() if k != "seconds"
        }


def test_full_dataset_and_calibration_metrics_match_an_independent_computation():
    obs, act, next_obs, _ = linear_system(11, 600, noise=True)
    model = make_model(probabilistic=True, members=2)
    cfg = dataclasses.replace(BASE_CFG, fit_epochs=2, num_elites=1)
    predictions = []

    def predict_everything(_row: dict) -> None:
        with torch.no_grad():
            pred = model.predict(torch.tensor(obs), torch.tensor(act))
        predictions.append((pred.next_obs_mean.double(), pred.next_obs_var.double()))

    result = fit_ensemble(
        model,
        make_dataset(obs, act, next_obs),
        cfg,
        0,
        CPU,
        on_epoch=predict_everything,
        progress=False,
        track_training=True,
    )
    target = torch.tensor(next_obs)
    std = model.target_std.double()  # normalised space: errors / std, variances / std^2
    hold = torch.as_tensor(result.holdout_indices)
    for row, (mean, var) in zip(result.history, predictions, strict=True):
        err = (mean - target) / std
        mse = err.square().mean(dim=(1, 2))
        ens_err = (mean.mean(dim=0) - target) / std
        ens_var = (var.mean(dim=0) + mean.var(dim=0, correction=0)) / std.square()
        nll_ens = (ens_err.square() / ens_var + ens_var.log()).mean()
        z2 = (err.square() / (var / std.square()))[:, hold]
        expected = {
            "full_mse_m0": mse[0],
            "full_mse_m1": mse[1],
            "full_mse_ensemble": ens_err.square().mean(),
            "full_nll_ensemble": nll_ens,
            "holdout_z2_m1": z2[1].mean(),
            "holdout_within_1sigma_m0": (z2[0] <= 1).double().mean(),
        }
        for name, value in expected.items():
            assert row[name] == pytest.approx(float(value), rel=1e-4, abs=1e-5), name


def reward_of(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    """A known task reward, nonlinear in the action: sum of s minus 0.5 |a|^2."""
    return obs.sum(axis=1) - 0.5 * (act**2).sum(axis=1)


def test_reward_head_learns_a_known_reward_function():
    obs, act, next_obs, _ = linear_system(12, 3000, noise=True)
    model = make_model(probabilistic=True, reward=True)
    cfg = dataclasses.replace(BASE_CFG, fit_epochs=30)
    data = make_dataset(obs, act, next_obs, reward_of(obs, act))
    fit_ensemble(model, data, cfg, 0, CPU, progress=False)
    t_obs, t_act, _, _ = linear_system(13, 1000)
    t_reward = reward_of(t_obs, t_act)
    with torch.no_grad():
        pred = model.predict(torch.tensor(t_obs), torch.tensor(t_act))
    mse = ((pred.reward_mean.numpy() - t_reward) ** 2).mean(axis=1)
    assert mse.max() < 0.01 * t_reward.var()
    # The reward is deterministic: its predicted variance is far below the reward's spread.
    assert pred.reward_var.mean() < 0.01 * t_reward.var()


def test_train_step_clips_each_members_gradient():
    model = make_model(members=3, hidden=[16])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 32, 5, generator=g), 10 * torch.randn(3, 32, 3, generator=g)

    def member_norms() -> torch.Tensor:
        return sum(p.grad.square().flatten(1).sum(dim=1) for p in model.parameters()).sqrt()

    before = [p.detach().clone() for p in model.parameters()]
    mse, nll = train_step(model, optimizer, x, y, [0.0, 0.0], None)
    assert (member_norms() > 0.1).all() and mse.shape == (3,) and nll is None
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    train_step(model, optimizer, x, y, [0.0, 0.0], 0.1)
    torch.testing.assert_close(member_norms(), torch.full((3,), 0.1), rtol=1e-4, atol=0)


def test_zero_holdout_trains_on_every_row_and_logs_no_holdout():
    """`holdout_ratio: 0` (mjrl's MOReL fit): each epoch trains on all N rows, in full batches
    plus one remainder, the normalisers are the mean and mean absolute deviation of all N
    (one far-off row would move them if it were held out), nothing is evaluated on a holdout,
    the last epoch is kept and every member is an elite."""
    n = 333
    obs, act, next_obs, _ = linear_system(11, n)
    obs[17] += 50.0  # any holdout drawing this row would change the input statistics
    data = make_dataset(obs, act, next_obs)
    model = make_model(members=3)
    rows = count_forward_rows(model)
    cfg = dataclasses.replace(
        BASE_CFG,
        fit_epochs=2,
        holdout_ratio=0.0,
        snapshot="last",
        num_elites=3,
        patience=0,
        normalization="mad",
    )
    result = fit_ensemble(model, data, cfg, 0, CPU, progress=False)
    # 2 epochs of ceil(333 / 64) = 6 steps, 5 x 64 + 13 rows each; no evaluation pass at all.
    assert rows == [64] * 5 + [13] + [64] * 5 + [13]
    inputs = np.concatenate([obs, act], axis=1)
    mad = np.abs(inputs - inputs.mean(0)).mean(0)
    np.testing.assert_allclose(model.input_mean.numpy(), inputs.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.input_std.numpy(), mad, rtol=1e-5)
    assert len(result.holdout_indices) == 0 and result.holdout == {}
    assert result.holdout_mse == [] and result.best_epoch == [2, 2, 2]
    assert result.elites == [0, 1, 2] == model.elites
    assert all(not key.startswith("holdout") for row in result.history for key in row)
    assert [row["epoch"] for row in result.history] == [1, 2]

    # track_training's whole-dataset metrics are then the training split's, evaluated once.
    tracked = make_model(members=3)
    rows = count_forward_rows(tracked)
    result = fit_ensemble(tracked, data, cfg, 0, CPU, progress=False, track_training=True)
    assert rows[6:7] == [n] and len(rows) == 14  # 6 steps, one pass over all rows, per epoch
    assert result.history[-1]["full_mse_ensemble"] > 0
    assert all(not key.startswith("holdout") for row in result.history for key in row)


def test_std_inputs_scales_the_inputs_as_upstream_pets_and_leaves_the_targets_raw():
    """`normalization: std_inputs` is handful-of-trials' `TensorStandardScaler` (BNN.py:248,
    406; TensorStandardScaler.py:43-45): inputs `(x - mean) / std` over the training rows, a
    std below 1e-12 counted as 1; the targets are not scaled. Written here from upstream's
    definition on a constant column (std 0: 1) and a column of std 1e-9 (kept; `std` would
    raise it to 1e-6)."""
    n = 120
    obs, act, next_obs, _ = linear_system(12, n)
    obs[:, 1] = 0.7
    obs[:, 2] = 1e-9 * (-1.0) ** np.arange(n)
    model = make_model(members=2)
    cfg = dataclasses.replace(
        BASE_CFG, fit_epochs=1, holdout_ratio=0.0, snapshot="last", num_elites=2,
        normalization="std_inputs",
    )  # fmt: skip
    fit_ensemble(model, make_dataset(obs, act, next_obs), cfg, 0, CPU, progress=False)
    inputs = np.concatenate([obs, act], axis=1).astype(np.float32).astype(np.float64)
    mu, sigma = inputs.mean(axis=0), inputs.std(axis=0)
    sigma[sigma < 1e-12] = 1.0
    np.testing.assert_allclose(model.input_mean.numpy(), mu, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(model.input_std.numpy(), sigma, rtol=1e-6)
    assert model.input_std[1] == 1.0 and abs(model.input_std[2].item() - 1e-9) < 1e-15
    assert (model.target_mean == 0).all() and (model.target_std == 1).all()
    # The network's output is the raw change of state.
    x, a = torch.tensor(obs[:5], dtype=torch.float32), torch.tensor(act[:5], dtype=torch.float32)
    with torch.no_grad():
        raw, _ = model(model.normalize_inputs(x, a).expand(2, -1, -1))
        torch.testing.assert_close(model.predict(x, a).next_obs_mean, x + raw)
