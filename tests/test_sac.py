"""SAC: hand-written gradients, learning, bootstrapping, bounds, reproducibility, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ombrl.agents.buffer import Batch, ReplayBuffer
from ombrl.agents.networks import StackedMLP
from ombrl.agents.sac import SAC, SACConfig
from ombrl.errors import OmbrlError
from ombrl.io import load_model, save_model

CPU = torch.device("cpu")


def config(**overrides) -> SACConfig:
    values = dict(hidden_size=[32, 32], gamma=0.99, tau=0.005, lr=1e-3, batch_size=64, alpha=None)
    values.update(overrides)
    return SACConfig(**values)


def random_buffer(n: int = 1000, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> ReplayBuffer:
    g = torch.Generator().manual_seed(seed)
    buffer = ReplayBuffer(n, obs_dim, act_dim, CPU)
    buffer.add(
        Batch(
            torch.randn(n, obs_dim, generator=g),
            torch.rand(n, act_dim, generator=g) * 2 - 1,
            torch.randn(n, generator=g),
            torch.randn(n, obs_dim, generator=g),
            (torch.rand(n, generator=g) < 0.1).float(),
        )
    )
    return buffer


def train(agent: SAC, buffer: ReplayBuffer, updates: int, seed: int) -> list[dict[str, float]]:
    g = torch.Generator().manual_seed(seed)
    return [agent.update(buffer.sample(agent.cfg.batch_size, g)) for _ in range(updates)]


def q_values(critic: StackedMLP, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    return critic(torch.cat([obs, act], dim=-1).expand(2, -1, -1))[0].squeeze(-1)


def autograd_update(agent: SAC, batch: Batch) -> dict[str, torch.Tensor]:
    """The textbook SAC update through autograd, stepping the agent's own optimisers.

    Returns the gradients each optimiser stepped with, keyed like `agent.state_dict()`.
    """
    n, cfg = len(batch.obs), agent.cfg
    alpha = agent.log_alpha.detach().exp()
    eps = torch.randn(2 * n, agent.act_dim, generator=agent.generator)
    both = agent.actor(torch.cat([batch.next_obs, batch.obs]), eps)
    next_pi, pi = both.rows(0, n), both.rows(n, 2 * n)
    with torch.no_grad():
        next_q = q_values(agent.target_critic, batch.next_obs, next_pi.act).min(dim=0).values
        soft = next_q - alpha * next_pi.log_prob
        target = batch.rew + cfg.gamma * (1 - batch.terminal) * soft
    critic_loss = (q_values(agent.critic, batch.obs, batch.act) - target).square().mean(1).sum()
    agent.critic_optim.zero_grad()
    critic_loss.backward()
    grads = {f"critic.{k}": p.grad.clone() for k, p in agent.critic.named_parameters()}
    agent.critic_optim.step()

    agent.critic.requires_grad_(False)
    min_q = q_values(agent.critic, batch.obs, pi.act).min(dim=0).values
    actor_loss = (alpha * pi.log_prob - min_q).mean()
    alpha_loss = -(agent.log_alpha * (pi.log_prob.detach() + agent.target_entropy)).mean()
    agent.actor_optim.zero_grad()
    (actor_loss + alpha_loss).backward()
    grads.update({f"actor.{k}": p.grad.clone() for k, p in agent.actor.named_parameters()})
    if cfg.alpha is None:
        grads["log_alpha"] = agent.log_alpha.grad.clone()
    agent.actor_optim.step()
    agent.critic.requires_grad_(True)
    with torch.no_grad():
        targets, online = agent.target_critic.parameters(), agent.critic.parameters()
        for target_p, p in zip(targets, online, strict=True):
            target_p.lerp_(p, cfg.tau)
    agent.step += 1
    return grads


@pytest.mark.parametrize(
    ("alpha", "critic_offset"), [(None, 0.0), (0.3, 0.0), (None, 100.0)], ids=str
)
def test_hand_written_gradients_match_autograd(alpha: float | None, critic_offset: float) -> None:
    """Three updates of `SAC.update` against autograd's (float64): the same gradients reach
    the optimisers and the same parameters come out. Asymmetric bounds, a log_std clamped at
    both bounds, terminals; critic_offset makes critic 1 never the minimum."""
    torch.set_default_dtype(torch.float64)
    try:
        low, high = np.array([-1.0, 0.0, -2.0]), np.array([1.0, 2.0, 3.0])
        ours, reference = (
            SAC(5, 3, low, high, config(alpha=alpha, lr=1e-2), CPU, seed=0) for _ in range(2)
        )
        for agent in (ours, reference):
            with torch.no_grad():
                agent.actor.net.bias2[..., 3:] += torch.tensor([0.0, 30.0, -40.0])
                for critic in (agent.critic, agent.target_critic):
                    critic.bias2[1] += critic_offset
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            batch = Batch(
                torch.randn(64, 5, generator=g),
                torch.rand(64, 3, generator=g),
                torch.randn(64, generator=g),
                torch.randn(64, 5, generator=g),
                (torch.rand(64, generator=g) < 0.2).double(),
            )
            expected = autograd_update(reference, batch)
            ours.update(batch)
            params = {
                **{f"critic.{k}": p for k, p in ours.critic.named_parameters()},
                **{f"actor.{k}": p for k, p in ours.actor.named_parameters()},
                "log_alpha": ours.log_alpha,
            }
            assert set(expected) == {k for k, p in params.items() if p.grad is not None}
            for key, grad in expected.items():
                assert grad.abs().max() > 1e-6, key  # every gradient is exercised
                torch.testing.assert_close(params[key].grad, grad, rtol=1e-6, atol=1e-9)
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-6, atol=1e-9)
    finally:
        torch.set_default_dtype(torch.float32)


def test_compiled_update_matches_the_eager_one_and_reproduces() -> None:
    """`compile: true` changes how the update runs, not what it computes: ten updates end at the
    eager agent's parameters and metrics to float tolerance, each gradient computation is one
    graph, and two compiled agents agree exactly."""
    buffer = random_buffer()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = SAC(3, 2, -1.0, 1.0, config(), CPU, seed=0)
    first, second = (SAC(3, 2, -1.0, 1.0, config(compile=True), CPU, seed=0) for _ in range(2))
    metrics = [train(agent, buffer, 10, seed=1) for agent in (eager, first, second)]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # one per phase, no break
    assert metrics[1] == metrics[2]
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert metrics[1][-1] == pytest.approx(metrics[0][-1], rel=1e-4, abs=1e-5)
    for key, value in eager.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(first.state_dict()[key], value, rtol=1e-4, atol=1e-5)
    assert not torch.equal(
        eager.critic.weight1, SAC(3, 2, -1.0, 1.0, config(), CPU, 0).critic.weight1
    )


def test_log_prob_matches_torch_distributions() -> None:
    """The squashed Gaussian's log-density (in the [-1, 1] space) against torch.distributions."""
    agent = SAC(3, 2, np.array([-1.0, 0.0]), np.array([1.0, 4.0]), config(), CPU, seed=0)
    obs = torch.randn(500, 3, generator=torch.Generator().manual_seed(1)) * 3
    sample = agent.actor(obs, torch.randn(500, 2, generator=torch.Generator().manual_seed(2)))
    mean, log_std = agent.actor.net(obs[None])[0][0].chunk(2, dim=-1)
    squashed = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.clamp(-20, 2).exp()),
        torch.distributions.TanhTransform(),
    )
    expected = squashed.log_prob(sample.tanh_u.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    torch.testing.assert_close(sample.log_prob, expected, rtol=1e-4, atol=1e-3)
    center, half_width = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 2.0])
    torch.testing.assert_close(sample.act, center + half_width * sample.tanh_u)


@pytest.mark.parametrize("terminal", [True, False])
def test_terminal_transitions_do_not_bootstrap(terminal: bool) -> None:
    """One transition (s, a, r=1, s'=s) repeated: Q -> 1 if terminal, toward 1/(1-gamma) if not."""
    n = 64
    buffer = ReplayBuffer(n, 2, 1, CPU)
    buffer.add(
        Batch(
            torch.ones(n, 2),
            torch.zeros(n, 1),
            torch.ones(n),
            torch.ones(n, 2),
            torch.full((n,), float(terminal)),
        )
    )
    agent = SAC(2, 1, -1.0, 1.0, config(gamma=0.9, tau=0.1, alpha=0.0), CPU, seed=0)
    q = train(agent, buffer, 400, seed=0)[-1]["q_mean"]
    if terminal:
        assert q == pytest.approx(1.0, abs=0.05)
    else:
        assert q > 3.0


def test_actions_respect_asymmetric_bounds() -> None:
    low, high = np.array([-1.0, 0.0]), np.array([1.0, 5.0])
    agent = SAC(3, 2, low, high, config(), CPU, seed=0)
    obs = np.random.default_rng(0).normal(0, 100, (2000, 3))  # saturates the tanh
    for deterministic in (True, False):
        act = agent.act(obs, deterministic)
        assert act.shape == (2000, 2)
        assert (act >= low).all() and (act <= high).all()
        assert act[:, 1].min() < 0.5 and act[:, 1].max() > 4.5
    assert agent.act(obs[0], True).shape == (2,)


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    buffer = random_buffer()
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(123)  # the global RNG must not matter
        agent = SAC(3, 2, -1.0, 1.0, config(), CPU, seed=seed)
        metrics = train(agent, buffer, 30, seed=seed)
        runs.append((metrics, agent.act(np.ones(3), deterministic=False)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0][-1] != runs[2][0][-1]


def test_learned_alpha_moves_fixed_alpha_stays() -> None:
    buffer = random_buffer()
    learned = train(SAC(3, 2, -1.0, 1.0, config(), CPU, seed=0), buffer, 50, seed=0)
    fixed = train(SAC(3, 2, -1.0, 1.0, config(alpha=0.2), CPU, seed=0), buffer, 50, seed=0)
    assert learned[0]["alpha"] == pytest.approx(1.0) and learned[-1]["alpha"] < 0.98
    assert all(m["alpha"] == pytest.approx(0.2) for m in fixed)


def test_checkpoint_round_trip_resumes_identically(tmp_path) -> None:
    """Networks, optimiser state, step and RNG survive safetensors: the resumed agent
    produces exactly the numbers the original would have."""
    buffer = random_buffer()
    original = SAC(3, 2, -1.0, 1.0, config(), CPU, seed=0)
    train(original, buffer, 20, seed=0)
    save_model(tmp_path, original.state_dict(), original.spec, name="policy")
    tensors, spec = load_model(tmp_path, name="policy")
    resumed = SAC(
        spec["obs_dim"],
        spec["act_dim"],
        np.array(spec["action_low"]),
        np.array(spec["action_high"]),
        SACConfig(**spec["config"]),
        CPU,
        seed=99,
    )
    resumed.load_state_dict(tensors)
    assert resumed.step == 20
    assert train(resumed, buffer, 10, seed=1) == train(original, buffer, 10, seed=1)


def test_loading_a_mismatched_state_is_a_user_error() -> None:
    small = SAC(3, 2, -1.0, 1.0, config(), CPU, seed=0)
    wide = SAC(3, 2, -1.0, 1.0, config(hidden_size=[64, 64]), CPU, seed=0)
    with pytest.raises(OmbrlError, match="does not match the actor"):
        wide.load_state_dict(small.state_dict())
    with pytest.raises(OmbrlError, match="missing"):
        small.load_state_dict({k: v for k, v in small.state_dict().items() if k != "log_alpha"})
