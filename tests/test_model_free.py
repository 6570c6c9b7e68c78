"""The model-free offline references (td3-bc, iql, cql): each loss against an independent
computation from its paper's definition, written here with plain torch ops on a tiny batch,
and each whole update against the first Adam step those losses' gradients imply.

The networks are evaluated here by `mlp` (matmuls on the agent's own weight tensors), not by
the agents' forward passes; the losses follow the papers' equations, not the modules' code.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from ombrl.agents.buffer import Batch
from ombrl.agents.cql import CQL, CQLConfig, CQLNoise
from ombrl.agents.iql import IQL, IQLConfig
from ombrl.agents.td3_bc import TD3BC, TD3BCConfig
from ombrl.config import resolve_mode
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError

CPU = torch.device("cpu")
OBS, ACT, B = 3, 2, 8
LOW, HIGH = np.array([-1.0, -2.0]), np.array([1.0, 3.0])  # asymmetric bounds on purpose
CENTER, HALF = torch.tensor([0.0, 0.5]), torch.tensor([1.0, 2.5])


def mlp(module: torch.nn.Module, member: int, x: Tensor) -> Tensor:
    """Network `member` of a stacked MLP: x W_k + b_k with ReLU between layers."""
    params = dict(module.named_parameters())
    layers = len(params) // 2
    for k in range(layers):
        x = x @ params[f"weight{k}"][member] + params[f"bias{k}"][member, 0]
        if k < layers - 1:
            x = torch.relu(x)
    return x


def q(critic: torch.nn.Module, member: int, obs: Tensor, act: Tensor) -> Tensor:
    return mlp(critic, member, torch.cat([obs, act], -1))[:, 0]


def tiny_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    act = CENTER + HALF * (torch.rand(B, ACT, generator=g) * 2 - 1)
    terminal = torch.zeros(B)
    terminal[[1, 5]] = 1.0
    return Batch(
        torch.randn(B, OBS, generator=g) * 2 + 1,
        act,
        torch.randn(B, generator=g),
        torch.randn(B, OBS, generator=g) * 2 + 1,
        terminal,
    )


def tiny_dataset(seed: int = 0) -> Dataset:
    """Two episodes of random transitions (returns differ) for `prepare`."""
    rng = np.random.default_rng(seed)
    n = 40
    return Dataset(
        observations=rng.normal(1, 2, (n, OBS)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        rewards=rng.normal(0, 1, n).astype(np.float32),
        next_observations=rng.normal(1, 2, (n, OBS)).astype(np.float32),
        terminals=np.zeros(n, bool),
        timeouts=np.arange(n) % 20 == 19,
        episode_ids=np.arange(n) // 20,
        env_id=None,
    )


def normalized(agent, batch: Batch) -> Batch:
    """The batch as the networks see it: states standardised by the agent's statistics."""
    mean, std = agent.obs_mean, agent.obs_std
    return Batch(
        (batch.obs - mean) / std,
        batch.act,
        batch.rew,
        (batch.next_obs - mean) / std,
        batch.terminal,
    )


def grads(loss: Tensor, params: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))


def snapshot(module: torch.nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def assert_first_adam_step(before: list[Tensor], after, expected_grads, lr: float) -> None:
    """A first Adam step moves each parameter by -lr g / (|g| + 1e-8) (bias-corrected
    moments are g and g^2), so the step shows the gradient the update used, sign and all.
    Gradients within rounding of 0 (|g| < 1e-6) may take either sign and are not compared."""
    for old, new, g in zip(before, after, expected_grads, strict=True):
        step, clear = new.detach() - old, g.abs() > 1e-6
        want = -lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(step[clear], want[clear], atol=lr * 2e-3, rtol=0)
        assert clear.float().mean() > 0.5


# TD3+BC ---------------------------------------------------------------------------------------


def td3_bc(**overrides) -> TD3BC:
    cfg = dict(
        hidden_size=[16, 16],
        gamma=0.9,
        tau=0.1,
        lr=1e-3,
        batch_size=B,
        alpha=2.5,
        policy_noise=0.2,
        noise_clip=0.5,
        policy_delay=2,
        normalize_states=True,
    )
    cfg.update(overrides)
    agent = TD3BC(OBS, ACT, LOW, HIGH, TD3BCConfig(**cfg), CPU, seed=3)
    agent.prepare(tiny_dataset())
    return agent


def td3_bc_critic_loss(agent: TD3BC, batch: Batch, noise: Tensor) -> Tensor:
    """Fujimoto & Gu 2021, Algorithm 1 (TD3's critic): y = r + gamma (1 - d) min_k
    Q'_k(s', a~), a~ = clip(pi'(s') + clip(sigma eps, -c, c), bounds), sigma and c in units of
    the action half-range; L = sum_k mean (Q_k(s, a) - y)^2."""
    cfg, low, high = agent.cfg, CENTER - HALF, CENTER + HALF
    with torch.no_grad():
        smoothing = torch.clamp(cfg.policy_noise * noise, -cfg.noise_clip, cfg.noise_clip) * HALF
        target_pi = CENTER + HALF * torch.tanh(mlp(agent.target_actor, 0, batch.next_obs))
        next_act = torch.min(torch.max(target_pi + smoothing, low), high)
        next_q = torch.min(*(q(agent.target_critic, k, batch.next_obs, next_act) for k in (0, 1)))
        y = batch.rew + cfg.gamma * (1 - batch.terminal) * next_q
    return sum(((q(agent.critic, k, batch.obs, batch.act) - y) ** 2).mean() for k in (0, 1))


def td3_bc_actor_loss(agent: TD3BC, batch: Batch, actor: torch.nn.Module | None = None) -> Tensor:
    """Fujimoto & Gu 2021, eq. (3)-(4): pi = argmax E[lambda Q1(s, pi(s)) - (pi(s) - a)^2],
    lambda = alpha / (1/N sum |Q1(s_i, a_i)|) with a_i = pi(s_i), lambda not differentiated
    (the authors' code); the squared error averaged over batch and action dimensions, in
    units of the action half-range (the paper's actions lie in [-1, 1])."""
    pi = CENTER + HALF * torch.tanh(mlp(actor or agent.actor, 0, batch.obs))
    q1 = q(agent.critic, 0, batch.obs, pi)
    lmbda = agent.cfg.alpha / q1.abs().mean().detach()
    return -lmbda * q1.mean() + (((pi - batch.act) / HALF) ** 2).mean()


def test_td3_bc_losses_match_the_papers_definition() -> None:
    agent, batch = td3_bc(), tiny_batch()
    seen = normalized(agent, batch)
    noise = torch.randn(B, ACT, generator=torch.Generator().manual_seed(1)) * 3  # clips bite
    critic = list(agent.critic.parameters())
    loss, _ = agent.critic_loss(seen, noise)
    expected = td3_bc_critic_loss(agent, seen, noise)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads(loss, critic), grads(expected, critic), strict=True):
        torch.testing.assert_close(got, want)
    actor = list(agent.actor.parameters())
    loss, lmbda, _ = agent.actor_loss(seen)
    expected = td3_bc_actor_loss(agent, seen)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads(loss, actor), grads(expected, actor), strict=True):
        torch.testing.assert_close(got, want)
    assert grads(loss, critic)[0] is not None  # through Q, as the paper's gradient is


def test_td3_bc_update_steps_critics_every_time_actor_and_targets_every_second() -> None:
    agent, batch = td3_bc(), tiny_batch()
    noise = torch.randn(B, ACT, generator=torch.Generator().manual_seed(2))
    agent.target_noise = lambda n: noise
    seen = normalized(agent, batch)
    critic_before, actor_before = snapshot(agent.critic), snapshot(agent.actor)
    targets_before = snapshot(agent.target_critic) + snapshot(agent.target_actor)
    want = grads(td3_bc_critic_loss(agent, seen, noise), list(agent.critic.parameters()))
    metrics = agent.update(batch)
    assert_first_adam_step(critic_before, agent.critic.parameters(), want, agent.cfg.lr)
    assert all(
        torch.equal(a, b) for a, b in zip(actor_before, agent.actor.parameters(), strict=True)
    )
    after = snapshot(agent.target_critic) + snapshot(agent.target_actor)
    assert all(torch.equal(a, b) for a, b in zip(targets_before, after, strict=True))
    assert metrics["actor_loss"] == 0.0  # no actor step yet
    # Second update: the critics step again, then the actor on the updated critics, then the
    # targets move by tau.
    actor = copy.deepcopy(agent.actor)
    critic_mid = snapshot(agent.critic)
    metrics = agent.update(batch)
    actor_loss = td3_bc_actor_loss(agent, seen, actor)  # the critics after this update's step
    want = grads(actor_loss, list(actor.parameters()))
    assert_first_adam_step(actor_before, agent.actor.parameters(), want, agent.cfg.lr)
    assert metrics["actor_loss"] == pytest.approx(actor_loss.item(), rel=1e-5)
    tau = agent.cfg.tau
    for old, online, new in zip(
        targets_before[: len(critic_mid)],
        agent.critic.parameters(),
        agent.target_critic.parameters(),
        strict=True,
    ):
        torch.testing.assert_close(new, (1 - tau) * old + tau * online.detach())


def test_td3_bc_stores_and_uses_its_state_statistics() -> None:
    agent = td3_bc()
    data = tiny_dataset()
    torch.testing.assert_close(agent.obs_mean, torch.tensor(data.observations.mean(0)))
    torch.testing.assert_close(
        agent.obs_std, torch.tensor(data.observations.std(0) + 1e-3), rtol=1e-5, atol=1e-6
    )
    obs = tiny_batch().obs
    expected = CENTER + HALF * torch.tanh(
        mlp(agent.actor, 0, (obs - agent.obs_mean) / agent.obs_std)
    )
    torch.testing.assert_close(torch.as_tensor(agent.act(obs.numpy(), True)), expected.detach())
    fresh = TD3BC(OBS, ACT, LOW, HIGH, agent.cfg, CPU, seed=9)  # unnormalised, other weights
    fresh.load_state_dict(agent.state_dict())
    assert np.array_equal(fresh.act(obs.numpy(), True), agent.act(obs.numpy(), True))
    assert agent.provenance == {"state_normalization": "dataset mean/std"}
    plain = td3_bc(normalize_states=False)
    assert torch.equal(plain.obs_mean, torch.zeros(OBS)) and plain.provenance == {
        "state_normalization": "none"
    }


# IQL ------------------------------------------------------------------------------------------


def iql(**overrides) -> IQL:
    cfg = dict(
        steps=10,
        hidden_size=[16, 16],
        gamma=0.9,
        tau=0.1,
        lr=1e-3,
        batch_size=B,
        expectile=0.7,
        beta=3.0,
        max_weight=100.0,
        actor_schedule="cosine",
        normalize_states=True,
        normalize_rewards=True,
    )
    cfg.update(overrides)
    agent = IQL(OBS, ACT, LOW, HIGH, IQLConfig(**cfg), CPU, seed=4)
    agent.prepare(tiny_dataset())
    with torch.no_grad():  # a log std away from 0, so its gradient is not the trivial one
        agent.log_std.copy_(torch.tensor([-0.5, 0.3]))
    return agent


def iql_losses(agent: IQL, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """Kostrikov et al. 2021, eq. (5)-(7): L_V = E[L2^tau(min_k Q^_k(s, a) - V(s))] with
    L2^tau(u) = |tau - 1(u < 0)| u^2; L_Q = E[(r + gamma (1 - d) V(s') - Q(s, a))^2]
    (averaged over the two critics, CORL); L_pi = -E[min(exp(beta (Q^(s, a) - V(s))), 100)
    log pi(a|s)], pi Gaussian with mean center + half tanh(net(s)) and a free log std. Rewards
    scaled by 1000 / (max - min episode return) (the paper's locomotion setting)."""
    cfg = agent.cfg
    returns = [r.sum() for r in np.split(tiny_dataset().rewards, 2)]
    rew = batch.rew * 1000.0 / (max(returns) - min(returns))
    with torch.no_grad():
        target_q = torch.min(*(q(agent.target_critic, k, batch.obs, batch.act) for k in (0, 1)))
        next_v = mlp(agent.value, 0, batch.next_obs)[:, 0]
    u = target_q - mlp(agent.value, 0, batch.obs)[:, 0]
    value_loss = (torch.abs(cfg.expectile - (u < 0).float()) * u**2).mean()
    y = rew + cfg.gamma * (1 - batch.terminal) * next_v
    critic_loss = (
        sum(((q(agent.critic, k, batch.obs, batch.act) - y) ** 2).mean() for k in (0, 1)) / 2
    )
    weight = torch.clamp(torch.exp(cfg.beta * u.detach()), max=cfg.max_weight)
    mean = CENTER + HALF * torch.tanh(mlp(agent.actor, 0, batch.obs))
    log_prob = torch.distributions.Normal(mean, agent.log_std.exp()).log_prob(batch.act).sum(-1)
    return value_loss, critic_loss, -(weight * log_prob).mean()


def test_iql_update_matches_the_papers_losses() -> None:
    agent, batch = iql(), tiny_batch()
    seen = normalized(agent, batch)
    value_loss, critic_loss, actor_loss = iql_losses(agent, seen)
    expected = {
        "value": grads(value_loss, list(agent.value.parameters())),
        "critic": grads(critic_loss, list(agent.critic.parameters())),
        "actor": grads(actor_loss, [*agent.actor.parameters(), agent.log_std]),
    }
    before = {
        "value": snapshot(agent.value),
        "critic": snapshot(agent.critic),
        "actor": [*snapshot(agent.actor), agent.log_std.detach().clone()],
    }
    metrics = agent.update(batch)
    for name, loss in (("value", value_loss), ("critic", critic_loss), ("actor", actor_loss)):
        assert metrics[f"{name}_loss"] == pytest.approx(loss.item(), rel=1e-5), name
    assert_first_adam_step(before["value"], agent.value.parameters(), expected["value"], 1e-3)
    assert_first_adam_step(before["critic"], agent.critic.parameters(), expected["critic"], 1e-3)
    after = [*agent.actor.parameters(), agent.log_std]
    assert_first_adam_step(before["actor"], after, expected["actor"], 1e-3)  # cosine(0) = lr


def test_iql_actor_schedule_is_cosine_over_the_run() -> None:
    agent = iql(steps=10)
    assert [agent.actor_lr(k) for k in (0, 5, 10)] == pytest.approx([1e-3, 5e-4, 0.0])
    assert iql(actor_schedule="constant").actor_lr(7) == 1e-3


def test_iql_refuses_reward_normalisation_of_equal_returns() -> None:
    data = tiny_dataset()
    data.rewards[:] = 1.0
    agent = IQL(OBS, ACT, LOW, HIGH, iql().cfg, CPU, seed=0)
    with pytest.raises(OmbrlError, match="normalize_rewards: .*set normalize_rewards: false"):
        agent.prepare(data)


# CQL ------------------------------------------------------------------------------------------


def cql(**overrides) -> CQL:
    cfg = dict(
        hidden_size=[16, 16],
        gamma=0.9,
        tau=0.1,
        actor_lr=1e-3,
        critic_lr=2e-3,
        batch_size=B,
        min_q_weight=5.0,
        n_actions=3,
        temperature=1.0,
        backup_entropy=False,
        steps=100,
        bc_fraction=0.0,
        normalize_states=False,
    )
    cfg.update(overrides)
    return CQL(OBS, ACT, LOW, HIGH, CQLConfig(**cfg), CPU, seed=5)


def tanh_gaussian(agent: CQL, obs: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """SAC's policy (Haarnoja et al. 2018, appendix C) with rlkit's log-std bounds [-5, 2]:
    u = mu + sigma eps, a = center + half tanh(u); log pi of the squashed action in [-1, 1]:
    log N(u) - sum log(1 - tanh(u)^2)."""
    out = mlp(agent.actor.net, 0, obs)
    mu, log_std = out[:, :ACT], out[:, ACT:].clamp(-5, 2)  # rlkit's policies.py:10-11
    u = mu + log_std.exp() * eps
    log_prob = torch.distributions.Normal(mu, log_std.exp()).log_prob(u).sum(-1)
    log_prob = log_prob - torch.log(1 - torch.tanh(u) ** 2).sum(-1)
    return CENTER + HALF * torch.tanh(u), log_prob


def cql_losses(agent: CQL, batch: Batch, noise: CQLNoise) -> tuple[Tensor, Tensor, Tensor]:
    """Kumar et al. 2020, eq. (4) CQL(H) with the importance-sampled estimate of their
    appendix F: per critic k,
    L_k = alpha' (E_s[log sum_j exp(Q_k(s, a_j) - log p(a_j))] - E_{s,a~D}[Q_k(s, a)])
          + E[(r + gamma (1 - d) min_l Q'_l(s', a') - Q_k(s, a))^2],
    with a_j: N uniform actions (p = 2^-dim in [-1, 1]), N from pi(.|s), N from pi(.|s') (all
    evaluated at s); a' ~ pi(.|s'), no entropy in the target. Actor and temperature: SAC's."""
    cfg, cfg_n = agent.cfg, agent.cfg.n_actions
    eps = noise.normal
    alpha = agent.log_alpha.exp().detach()
    pi, log_pi = tanh_gaussian(agent, batch.obs, eps[:B])
    with torch.no_grad():
        next_act, _ = tanh_gaussian(agent, batch.next_obs, eps[B : 2 * B])
        next_q = torch.min(*(q(agent.target_critic, k, batch.next_obs, next_act) for k in (0, 1)))
        y = batch.rew + cfg.gamma * (1 - batch.terminal) * next_q
        candidates, log_p = [], []
        for j in range(cfg_n):  # the j-th uniform, pi(s) and pi(s') action of every state
            candidates.append(CENTER + HALF * noise.uniform[j * B : (j + 1) * B])
            log_p.append(torch.full((B,), ACT * math.log(0.5)))
        for start, states in ((2 * B, batch.obs), ((2 + cfg_n) * B, batch.next_obs)):
            for j in range(cfg_n):
                rows = eps[start + j * B : start + (j + 1) * B]
                act, logp = tanh_gaussian(agent, states, rows)
                candidates.append(act)
                log_p.append(logp)
    critic_loss = 0.0
    for k in (0, 1):
        q_data = q(agent.critic, k, batch.obs, batch.act)
        q_j = torch.stack([q(agent.critic, k, batch.obs, a) for a in candidates], 1)  # B x 3N
        weighted = (q_j - torch.stack(log_p, 1)) / cfg.temperature
        lse = cfg.temperature * torch.log(torch.exp(weighted).sum(1))
        conservative = lse.mean() - q_data.mean()
        critic_loss = critic_loss + ((q_data - y) ** 2).mean() + cfg.min_q_weight * conservative
    q_pi = torch.min(*(q(agent.critic, k, batch.obs, pi) for k in (0, 1)))
    actor_loss = (alpha * log_pi - q_pi).mean()
    alpha_loss = -(agent.log_alpha * (log_pi.detach() - ACT)).mean()
    return critic_loss, actor_loss, alpha_loss


def cql_noise(agent: CQL, seed: int) -> CQLNoise:
    g = torch.Generator().manual_seed(seed)
    n = agent.cfg.n_actions
    return CQLNoise(
        torch.randn((2 + 2 * n) * B, ACT, generator=g), torch.rand(n * B, ACT, generator=g) * 2 - 1
    )


def test_cql_losses_match_the_papers_definition() -> None:
    agent, batch = cql(), tiny_batch()
    noise = cql_noise(agent, 1)
    got = agent.losses(batch, noise)
    critic_loss, actor_loss, alpha_loss = cql_losses(agent, batch, noise)
    critic, actor = list(agent.critic.parameters()), list(agent.actor.parameters())
    for name, want, params in (
        ("critic_loss", critic_loss, critic),
        ("actor_loss", actor_loss, actor),
        ("alpha_loss", alpha_loss, [agent.log_alpha]),
    ):
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads(got[name], params), grads(want, params), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert got["conservative"] > 0  # the uniform and policy actions outweigh the data's


def test_cql_update_steps_every_network_with_its_loss() -> None:
    agent, batch = cql(), tiny_batch()
    noise = cql_noise(agent, 2)
    agent.noise = lambda n: noise
    critic_loss, actor_loss, alpha_loss = cql_losses(agent, batch, noise)
    critic, actor = list(agent.critic.parameters()), list(agent.actor.parameters())
    want_critic = grads(critic_loss, critic)
    want_actor = grads(actor_loss, actor) + grads(alpha_loss, [agent.log_alpha])
    before_critic, before_actor = (
        snapshot(agent.critic),
        [*snapshot(agent.actor), agent.log_alpha.detach().clone()],
    )
    metrics = agent.update(batch)
    assert metrics["critic_loss"] == pytest.approx(critic_loss.item(), rel=1e-5)
    assert_first_adam_step(before_critic, agent.critic.parameters(), want_critic, 2e-3)
    assert_first_adam_step(
        before_actor, [*agent.actor.parameters(), agent.log_alpha], want_actor, 1e-3
    )


def test_cql_without_the_conservative_weight_is_sac_without_entropy_backup() -> None:
    agent, batch = cql(min_q_weight=0.0), tiny_batch()
    got = agent.losses(batch, cql_noise(agent, 3))
    torch.testing.assert_close(got["critic_loss"], got["td_loss"])


@pytest.mark.parametrize("make", [td3_bc, iql, cql])
def test_state_round_trip_resumes_identically(make) -> None:
    first, batch = make(), tiny_batch()
    for _ in range(3):
        first.update(batch)
    resumed = make()
    resumed.load_state_dict({k: v.clone() for k, v in first.state_dict().items()})
    assert resumed.step == 3
    for _ in range(3):
        assert resumed.update(batch) == first.update(batch)
    with pytest.raises(OmbrlError, match="state does not match"):
        make(hidden_size=[8]).load_state_dict(first.state_dict())


def test_figures_draw_the_model_free_references_in_greens_of_their_own() -> None:
    from matplotlib.colors import rgb_to_hsv

    from ombrl.scores import mode_colors

    method_of = {"bc": "bc", "mopo": "aleatoric-penalty", "td3-bc": "td3-bc", "cql-5": "cql"}
    method_of |= {f"sweep-{i}": "mbpo" for i in range(12)}  # enough for tab20
    colors = mode_colors(method_of)
    hue = {mode: rgb_to_hsv(colors[mode][:3])[0] for mode in method_of}
    free = {"td3-bc", "cql-5"}
    assert all(0.25 < hue[m] < 0.45 for m in free)  # green
    assert not any(0.25 < hue[m] < 0.45 for m in set(method_of) - free)
    assert len({colors[m] for m in free}) == 2


def test_cql_warm_start_fits_the_dataset_actions_first() -> None:
    """The authors' code (`policy_eval_start`): for the first updates (a share of them: 0.02
    of 100 is 2, the second still warm) the actor loss is alpha log pi(a~|s) - log pi(a|s)
    of the dataset action, with rlkit's TanhNormal:
    log N(atanh(a); mu, sigma) - log(1 - a^2 + 1e-6), a in [-1, 1]."""
    agent, batch = cql(bc_fraction=0.02), tiny_batch()
    agent.update(batch)
    noise = cql_noise(agent, 4)
    got = agent.losses(batch, noise)
    out = mlp(agent.actor.net, 0, batch.obs)
    mu, log_std = out[:, :ACT].clamp(-9, 9), out[:, ACT:].clamp(-5, 2)  # policies.py:81,84
    a = ((batch.act - CENTER) / HALF).clamp(-1 + 1e-6, 1 - 1e-6)
    normal = torch.distributions.Normal(mu, log_std.exp())
    data_log_prob = (normal.log_prob(torch.atanh(a)) - torch.log(1 - a**2 + 1e-6)).sum(-1)
    _, log_pi = tanh_gaussian(agent, batch.obs, noise.normal[:B])
    want = (agent.log_alpha.exp().detach() * log_pi - data_log_prob).mean()
    torch.testing.assert_close(got["actor_loss"], want, rtol=1e-5, atol=1e-5)
    actor = list(agent.actor.parameters())
    for g, w in zip(grads(got["actor_loss"], actor), grads(want, actor), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    agent.update(batch)  # step 2 of 2 done: Q from now on
    _, expected_q_loss, _ = cql_losses(agent, batch, noise)
    torch.testing.assert_close(agent.losses(batch, noise)["actor_loss"], expected_q_loss)


def test_cql_bc_steps_names_its_replacement() -> None:
    """The warm start is a share of `steps` now: the old count fails with one line."""
    with pytest.raises(OmbrlError, match=r"cql: bc_steps: renamed: use bc_fraction"):
        resolve_mode("cql", {"bc_steps": 1000}, "cql")
    assert resolve_mode("cql", {}, "cql")["bc_fraction"] == 0.04


def test_cql_actor_keeps_the_authors_log_std_floor() -> None:
    """rlkit's TanhGaussianPolicy (d4rl/rlkit/torch/sac/policies.py:11,84) clamps log std at
    -5, not SAC's -20: a net asking for log std -10 samples with std e^-5."""
    agent = cql()
    last = agent.actor.net.layers()[-1]
    with torch.no_grad():
        last[0].zero_()
        last[1][..., ACT:] = -10.0
    sample = agent.actor(torch.zeros(3, OBS), torch.ones(3, ACT))
    torch.testing.assert_close(sample.std, torch.full((3, ACT), math.exp(-5.0)))
