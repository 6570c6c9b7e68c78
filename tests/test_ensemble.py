"""The batched ensemble: shapes, member independence, log-variance bounds, raw-unit outputs."""

from __future__ import annotations

import pytest
import torch

from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble, EnsembleLinear

OBS, ACT, E, B = 5, 2, 4, 16


def make(probabilistic: bool, reward: bool = True, hidden=(32, 32)) -> DynamicsEnsemble:
    torch.manual_seed(0)
    return DynamicsEnsemble(OBS, ACT, list(hidden), E, probabilistic, "swish", reward)


def randomize_normalizers(model: DynamicsEnsemble) -> None:
    g = torch.Generator().manual_seed(1)
    model.set_normalizers(
        torch.randn(model.in_dim, generator=g),
        torch.rand(model.in_dim, generator=g) + 0.5,
        torch.randn(model.out_dim, generator=g),
        torch.rand(model.out_dim, generator=g) * 3 + 0.1,
    )


@pytest.mark.parametrize("probabilistic", [False, True])
@pytest.mark.parametrize("reward", [False, True])
def test_shapes(probabilistic, reward):
    model = make(probabilistic, reward)
    out = OBS + int(reward)
    mean, logvar = model(torch.randn(E, B, OBS + ACT))
    assert mean.shape == (E, B, out)
    assert (logvar is None) == (not probabilistic)
    if probabilistic:
        assert logvar.shape == (E, B, out)
    for obs, act in (
        (torch.randn(B, OBS), torch.randn(B, ACT)),
        (torch.randn(E, B, OBS), torch.randn(E, B, ACT)),
    ):
        with torch.no_grad():
            pred = model.predict(obs, act)
        assert pred.next_obs_mean.shape == (E, B, OBS)
        assert (pred.next_obs_var is None) == (not probabilistic)
        assert (pred.reward_mean is None) == (not reward)
        assert (pred.reward_var is None) == (not (reward and probabilistic))
        if reward:
            assert pred.reward_mean.shape == (E, B)
        if probabilistic:
            assert pred.next_obs_var.shape == (E, B, OBS) and (pred.next_obs_var > 0).all()


def test_members_depend_only_on_their_own_weights():
    model = make(probabilistic=True)
    x = torch.randn(E, B, OBS + ACT)
    with torch.no_grad():
        before = model(x)
        for p in model.parameters():
            p[2] += 0.1 * torch.randn_like(p[2])
        after = model(x)
    for b, a in zip(before, after, strict=True):
        changed = (b - a).abs().amax(dim=(1, 2))
        assert changed[2] > 1e-3
        assert torch.equal(changed[[0, 1, 3]], torch.zeros(3))


def test_gradient_of_one_member_touches_only_its_slice():
    model = make(probabilistic=True)
    loss, _, _ = model.loss(torch.randn(E, B, OBS + ACT), torch.randn(E, B, OBS + 1), 1e-3)
    loss[1].backward()
    for name, p in model.named_parameters():
        assert p.grad[1].abs().sum() > 0, name
        assert torch.equal(p.grad[[0, 2, 3]], torch.zeros_like(p.grad[[0, 2, 3]])), name


def test_shared_input_equals_per_member_input():
    model = make(probabilistic=False)
    obs, act = torch.randn(B, OBS), torch.randn(B, ACT)
    with torch.no_grad():
        shared = model.predict(obs, act)
        stacked = model.predict(obs.expand(E, B, OBS).clone(), act.expand(E, B, ACT).clone())
    torch.testing.assert_close(shared.next_obs_mean, stacked.next_obs_mean)


def test_logvar_is_softly_bounded():
    model = make(probabilistic=True)
    x = torch.randn(E, B, OBS + ACT)
    with torch.no_grad():
        for sign in (1.0, -1.0):
            model.head.bias[..., model.out_dim :] = sign * 1e3
            _, logvar = model(x)
            bound = model.max_logvar if sign > 0 else model.min_logvar
            torch.testing.assert_close(logvar, bound.expand_as(logvar), atol=1e-3, rtol=0)
        model.head.bias[..., model.out_dim :] = 0.0
        _, logvar = model(x)
        assert (logvar < model.max_logvar).all() and (logvar > model.min_logvar).all()


def test_predict_returns_raw_units():
    model = make(probabilistic=True)
    randomize_normalizers(model)
    obs, act = torch.randn(B, OBS) * 3, torch.randn(B, ACT)
    with torch.no_grad():
        pred = model.predict(obs, act)
        x = (torch.cat([obs, act], dim=1) - model.input_mean) / model.input_std
        mean, logvar = model(x.expand(E, B, -1))
    raw_mean = mean * model.target_std + model.target_mean
    raw_var = logvar.exp() * model.target_std.square()
    torch.testing.assert_close(pred.next_obs_mean, obs + raw_mean[..., :OBS])
    torch.testing.assert_close(pred.next_obs_var, raw_var[..., :OBS])
    torch.testing.assert_close(pred.reward_mean, raw_mean[..., OBS])
    torch.testing.assert_close(pred.reward_var, raw_var[..., OBS])


def test_probabilistic_loss_formula():
    model = make(probabilistic=True, hidden=(8,))
    x, y = torch.randn(E, B, OBS + ACT), torch.randn(E, B, OBS + 1)
    loss, mse, nll = model.loss(x, y, 0.0)
    mean, logvar = model(x)
    expected_nll = ((mean - y) ** 2 * torch.exp(-logvar) + logvar).mean(dim=(1, 2))
    bounds = 0.01 * (model.max_logvar.sum(dim=(1, 2)) - model.min_logvar.sum(dim=(1, 2)))
    torch.testing.assert_close(nll, expected_nll)
    torch.testing.assert_close(loss, expected_nll + bounds)
    torch.testing.assert_close(mse, ((mean - y) ** 2).mean(dim=(1, 2)))


def test_weight_decay_per_layer():
    model = make(probabilistic=False)  # 2 hidden + output = 3 layers
    x, y = torch.randn(E, B, OBS + ACT), torch.randn(E, B, OBS + 1)
    base, _, _ = model.loss(x, y, 0.0)
    same, _, _ = model.loss(x, y, [1e-2, 1e-2, 1e-2])
    torch.testing.assert_close(same, model.loss(x, y, 1e-2)[0])
    only_head, _, _ = model.loss(x, y, [0.0, 0.0, 0.5])
    head_sq = model.head.weight.square().sum(dim=(1, 2))
    torch.testing.assert_close(only_head - base, 0.25 * head_sq)
    assert (same > base).all()
    with pytest.raises(OmbrlError, match="weight_decay: 2 values"):
        model.loss(x, y, [1e-2, 1e-2])


def test_ensemble_linear_init_and_batched_matmul():
    torch.manual_seed(0)
    layer = EnsembleLinear(3, 400, 50)
    std = 1 / (2 * 400**0.5)
    assert layer.weight.abs().max() <= 2 * std + 1e-7
    assert abs(layer.weight.std().item() - 0.88 * std) < 0.05 * std  # truncation shrinks std
    assert torch.equal(layer.bias, torch.zeros(3, 1, 50))
    with torch.no_grad():
        layer.bias.normal_()
        x = torch.randn(3, 7, 400)
        expected = torch.stack([x[m] @ layer.weight[m] + layer.bias[m] for m in range(3)])
        torch.testing.assert_close(layer(x), expected)


def test_torch_init_is_nn_linears_uniform():
    """`init: torch` draws what upstream's nn.Linear members started from: weights and biases
    uniform in +-1/sqrt(in) (std bound / sqrt(3)), biases not zero."""
    torch.manual_seed(0)
    layer = EnsembleLinear(3, 400, 50, init="torch")
    bound = 1 / 400**0.5
    for tensor in (layer.weight, layer.bias):
        assert tensor.abs().max() <= bound and tensor.abs().max() > 0.95 * bound
    assert abs(layer.weight.std().item() - bound / 3**0.5) < 0.02 * bound
    model = DynamicsEnsemble(OBS, ACT, [8], E, True, "swish", False, init="torch")
    assert all(layer.bias.abs().min() > 0 for layer in [*model.hidden, model.head])


def test_bad_arguments_raise_ombrl_error():
    with pytest.raises(OmbrlError, match="init: 'xavier'"):
        DynamicsEnsemble(OBS, ACT, [8], E, False, "relu", False, init="xavier")
    with pytest.raises(OmbrlError, match="activation"):
        DynamicsEnsemble(OBS, ACT, [8], E, False, "tanh", False)
    with pytest.raises(OmbrlError, match="num_models"):
        DynamicsEnsemble(OBS, ACT, [8], 0, False, "relu", False)


def test_relu_and_linear_models_work():
    torch.manual_seed(0)
    model = DynamicsEnsemble(OBS, ACT, [], 2, False, "relu", False)
    assert model.num_layers == 1
    with torch.no_grad():
        pred = model.predict(torch.randn(3, OBS), torch.randn(3, ACT))
    assert pred.next_obs_mean.shape == (2, 3, OBS)


@pytest.mark.parametrize("probabilistic", [True, False])
def test_predict_runs_only_the_members_asked_for(probabilistic: bool) -> None:
    model = make(probabilistic=probabilistic, reward=True)
    with torch.no_grad():
        if probabilistic:  # per-member bounds: the subset must use its own members'
            model.max_logvar.sub_(torch.arange(E).view(E, 1, 1) * 0.5)
        for k, layer in enumerate([*model.hidden, model.head]):
            layer.weight.add_(0.1 * k)  # distinct members, distinct layers
        obs, act = torch.randn(6, OBS), torch.randn(6, ACT)
        full = model.predict(obs, act)
        part = model.predict(obs, act, torch.tensor([3, 0]))
    assert part.next_obs_mean.shape[0] == 2
    for name in ("next_obs_mean", "next_obs_var", "reward_mean", "reward_var"):
        whole = getattr(full, name)
        if whole is None:
            assert getattr(part, name) is None
        else:
            torch.testing.assert_close(getattr(part, name), whole[[3, 0]])
