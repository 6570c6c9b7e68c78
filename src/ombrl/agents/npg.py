"""Natural policy gradient (Kakade 2001; mjrl's NPG as MOReL and J-MOReL use it).

One iteration (`update`) takes a batch of whole paths (`ombrl.models.paths.Paths`):

1. Values of every step and of the state each path bootstraps from (`Paths.last_obs` at
   `Paths.last_time`: mjrl's `b[-1]`, the last kept state, or the next state) from the
   current baseline; the value after a terminal path is 0. GAE(gamma, lambda) advantages,
   normalised to mean 0 and std 1 (as mjrl), and the baseline's targets: `value_targets:
   returns` the discounted sums of the rewards (mjrl's `compute_returns`, never bootstrapped),
   `bootstrapped` the discounted returns bootstrapped as the advantages are.
2. Policy step: the vanilla gradient g of the surrogate `mean(pi/pi_old * A)`, the natural
   direction `F^-1 g` by conjugate gradient on Fisher-vector products (`F + damping I`), and the
   normalised step `theta += alpha F^-1 g` with `alpha = sqrt(step_size / (g^T F^-1 g))`, so
   `delta^T F delta = step_size` and the mean KL(old || new) is about `step_size / 2`.
   The log-std is then clamped at `min_log_std`.
3. Baseline fit: Adam (L2 weight decay) on the MSE to the returns, `value_epochs` passes in
   minibatches of `value_batch_size` (after the policy step, as mjrl).

The Fisher is the mean over states of the Gaussian's analytic Fisher: for the mean network
`J^T diag(1/sigma^2) J` (J = d mean / d theta; per product one forward-mode and one
reverse-mode pass of the tanh MLP, written out in `TanhMLP.jvp` / `vjp`: no second derivatives,
no autograd graph), and `2 I` for the log-std, which is what the Hessian of the mean KL (mjrl's
double backward) equals at the old policy.

Policy: a Gaussian MLP (tanh hidden layers, the last layer's weights and bias x 0.01 so the
first mean actions are near 0) with a learned state-independent log-std. Actions are not
squashed: callers clip them to the bounds (the model rollout and the environment do).
Baseline: a ReLU MLP on `[clip(x, -10, 10) / 10, (t / value_time_scale)^1..4]`, x the policy's
input (mjrl's and J-MOReL's MLPBaseline: t / 1000).
The input is `x = (obs - obs_mean) / obs_std` for the policy and the baseline alike, both
vectors stored with the policy (`input_statistics`): `none` raw observations, `mask` MOReL's
observation mask (x = obs * mask, 1 for positions and 0.02 for velocities: mjrl applies it to
the data, the environment, the policy and the baseline), `znorm` the dataset's mean and mean
absolute deviation (J-MOReL's `obs_scale: znorm`).

All randomness (weights, policy noise, minibatch order) comes from the seed and the generators
passed in: the same seed gives the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ombrl.agents.base import Agent, check_keys
from ombrl.agents.networks import StackedMLP
from ombrl.checkpoint import load_optimizer_tensors, optimizer_tensors
from ombrl.errors import OmbrlError
from ombrl.models.paths import Paths

INPUT_SCALINGS = ("none", "mask", "znorm")
VALUE_TARGETS = ("returns", "bootstrapped")
# Time features of the baseline: (t / value_time_scale)^1 .. ^TIME_POWERS (mjrl's MLPBaseline).
TIME_POWERS = 4
# Observation dimensions with a smaller spread are not rescaled (znorm).
MIN_OBS_SPREAD = 1e-6


@dataclass
class NPGConfig:
    """NPG hyperparameters (the config keys of the `morel` / `j-morel` methods)."""

    hidden_size: list[int]  # widths of the policy's hidden tanh layers
    init_log_std: float  # initial log-std of every action dimension
    min_log_std: float  # the log-std is clamped at this after every step
    step_size: float  # normalised step: delta^T F delta (mean KL about half of it)
    cg_iters: int  # conjugate-gradient iterations per step
    cg_damping: float  # added to the Fisher's diagonal (F + damping I)
    gamma: float  # discount of returns and advantages
    gae_lambda: float  # GAE lambda
    value_hidden_size: list[int]  # widths of the baseline's hidden ReLU layers
    value_lr: float  # Adam learning rate of the baseline
    value_weight_decay: float  # Adam L2 weight decay of the baseline
    value_batch_size: int  # samples per baseline minibatch
    value_epochs: int  # passes over the iteration's samples per baseline fit
    value_time_scale: float  # the baseline's time feature is t / value_time_scale
    bc_steps: int  # minibatch steps of `bc_init`
    bc_batch_size: int  # samples per behaviour-cloning minibatch
    bc_lr: float  # Adam learning rate of behaviour cloning
    input_scaling: str  # none | mask (MOReL's observation mask) | znorm (mean / MAD)
    value_targets: str  # returns (discounted sums, mjrl) | bootstrapped


class TanhMLP(nn.Module):
    """An MLP with tanh hidden layers and a linear output, weights drawn from a generator
    (PyTorch's Linear init, U(+-1/sqrt(in))), the output layer scaled by `out_scale`."""

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        out_dim: int,
        out_scale: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        widths = [in_dim, *hidden, out_dim]
        self.layers = nn.ModuleList()
        for k, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layer = nn.Linear(a, b, device="meta")
            bound = 1.0 / math.sqrt(a)
            scale = out_scale if k == len(widths) - 2 else 1.0
            layer.weight = nn.Parameter(
                torch.empty(b, a).uniform_(-bound, bound, generator=generator) * scale
            )
            layer.bias = nn.Parameter(
                torch.empty(b).uniform_(-bound, bound, generator=generator) * scale
            )
            self.layers.append(layer)

    def forward(self, x: Tensor) -> Tensor:
        *hidden, out = self.layers
        for layer in hidden:
            x = torch.tanh(layer(x))
        return out(x)

    def activations(self, x: Tensor) -> list[Tensor]:
        """The input of every layer (x, then the tanh outputs), without gradients."""
        inputs = [x]
        with torch.no_grad():
            for layer in self.layers[:-1]:
                inputs.append(torch.tanh(layer(inputs[-1])))
        return inputs

    def jvp(self, inputs: list[Tensor], tangents: list[Tensor]) -> Tensor:
        """d output / d parameters applied to `tangents` (one per parameter, in `parameters()`
        order): the forward-mode chain rule of the tanh MLP at `activations(x)`. B x out."""
        dx = None
        for k, layer in enumerate(self.layers):
            dw, db = tangents[2 * k], tangents[2 * k + 1]
            d_pre = torch.addmm(db, inputs[k], dw.T)
            if dx is not None:
                d_pre = d_pre + dx @ layer.weight.T
            if k == len(self.layers) - 1:
                return d_pre
            dx = d_pre * (1 - inputs[k + 1].square())
        raise AssertionError("unreachable")

    def vjp(self, inputs: list[Tensor], grad: Tensor) -> list[Tensor]:
        """`grad` (B x out, d L / d output) pulled back to every parameter, in `parameters()`
        order: the reverse-mode chain rule of the tanh MLP at `activations(x)`."""
        grads: list[Tensor] = []
        for k in reversed(range(len(self.layers))):
            if k < len(self.layers) - 1:
                grad = grad * (1 - inputs[k + 1].square())
            grads += [grad.sum(0), grad.T @ inputs[k]]  # reversed below: weight before bias
            if k > 0:
                grad = grad @ self.layers[k].weight
        return grads[::-1]


def conjugate_gradient(
    fvp: Callable[[Tensor], Tensor], b: Tensor, iters: int, residual_tol: float = 1e-10
) -> Tensor:
    """Approximately solve `A x = b` for a symmetric positive-definite A given as `fvp(v) = A v`.

    Args:
        fvp: the matrix-vector product.
        b: the right-hand side, a flat vector.
        iters: the most iterations (each one product).
        residual_tol: stop once `|r|^2` is below this.

    Returns:
        x, like b.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if rr.item() < residual_tol:
            break
        ap = fvp(p)
        step = rr / p.dot(ap)
        x = x + step * p
        r = r - step * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def gae(
    rew: Tensor, mask: Tensor, values: Tensor, last_values: Tensor, gamma: float, lam: float
) -> Tensor:
    """Generalised advantage estimates of padded paths.

    `delta_t = r_t + gamma V_{t+1} - V_t` with `V_{len}` = `last_values` (pass 0 for a terminal
    path), `A_t = sum_k (gamma lam)^k delta_{t+k}` within the path. With `lam = 1` and values 0
    this is the discounted return bootstrapped with `last_values`.

    Args:
        rew: N x T rewards.
        mask: N x T bool, valid steps (a prefix of each row).
        values: N x T, V(s_t) (entries past a path's end are ignored).
        last_values: N, the value after each path's last step.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        N x T advantages, 0 past each path's end.
    """
    n, t_max = rew.shape
    maskf = mask.to(rew.dtype)
    lengths = mask.sum(dim=1)
    next_values = torch.cat([values[:, 1:], values.new_zeros(n, 1)], dim=1)
    is_last = torch.arange(t_max, device=rew.device) == (lengths - 1).unsqueeze(1)
    next_values = torch.where(is_last, last_values.unsqueeze(1), next_values)
    delta = (rew + gamma * next_values - values) * maskf
    adv = torch.zeros_like(delta)
    running = delta.new_zeros(n)
    for t in range(t_max - 1, -1, -1):
        running = delta[:, t] + gamma * lam * running
        adv[:, t] = running
    return adv * maskf


def gaussian_log_prob(act: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(act; mean, exp(log_std)^2 I), summed over action dimensions: B."""
    z = (act - mean) * torch.exp(-log_std)
    return -0.5 * z.square().sum(-1) - log_std.sum() - 0.5 * math.log(2 * math.pi) * act.shape[-1]


def gaussian_kl(mean0: Tensor, log_std0: Tensor, mean1: Tensor, log_std1: Tensor) -> Tensor:
    """KL(N0 || N1) of diagonal Gaussians with state-independent log-stds: B."""
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    per_dim = log_std1 - log_std0 + (var0 + (mean0 - mean1).square()) / (2 * var1) - 0.5
    return per_dim.sum(-1)


def input_statistics(
    kind: str, observations: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """`(obs_mean, obs_std)` of an NPG's input `(obs - obs_mean) / obs_std` for `input_scaling`.

    Args:
        kind: `none` (0, 1), `mask` (0, 1 / mask) or `znorm` (the mean of `observations` and
            their mean absolute deviation, J-MOReL's `mean(|s - mean(s)|)`; spreads below
            1e-6 count as 1).
        observations: the dataset's observations, N x obs_dim.
        mask: MOReL's observation mask (obs_dim; read under `mask`).
    """
    obs_dim = observations.shape[1]
    if kind == "none":
        return np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32)
    if kind == "mask":
        if mask is None:
            raise OmbrlError("input_scaling mask: the task has no observation mask")
        return np.zeros(obs_dim, np.float32), (1.0 / np.asarray(mask)).astype(np.float32)
    if kind != "znorm":
        raise OmbrlError(f"input_scaling: {kind!r} is not one of {', '.join(INPUT_SCALINGS)}")
    mean = observations.mean(0)
    spread = np.abs(observations - mean).mean(0)
    return mean.astype(np.float32), np.where(spread < MIN_OBS_SPREAD, 1.0, spread).astype(
        np.float32
    )


@dataclass
class PathBatch:
    """The valid steps of an iteration's paths, flattened (M of them), ready for the update."""

    obs: Tensor  # M x obs_dim
    act: Tensor  # M x act_dim
    time: Tensor  # M, t / value_time_scale
    advantages: Tensor  # M, normalised to mean 0, std 1
    returns: Tensor  # M, the baseline's targets (`value_targets`)
    stats: dict[str, float]  # advantage_mean, advantage_std (before normalising)


class NPG(Agent):
    """A Gaussian MLP policy trained by natural policy gradient, with an MLP value baseline.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        action_low: lower bound(s) of the action space (callers clip to it).
        action_high: upper bound(s).
        cfg: hyperparameters.
        device: where networks and tensors live.
        seed: seeds the initial weights, the policy noise and the baseline's minibatch order.
        obs_mean: obs_dim shift of the input (`input_statistics`); None: 0, only with
            `input_scaling: none`.
        obs_std: obs_dim divisor of the input; None: 1, only with `none`.
    """

    kind = "npg"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: float | np.ndarray,
        action_high: float | np.ndarray,
        cfg: NPGConfig,
        device: torch.device,
        seed: int,
        obs_mean: np.ndarray | Tensor | None = None,
        obs_std: np.ndarray | Tensor | None = None,
    ) -> None:
        super().__init__(obs_dim, act_dim, action_low, action_high, cfg, device)
        if cfg.input_scaling not in INPUT_SCALINGS:
            raise OmbrlError(
                f"input_scaling: {cfg.input_scaling!r} is not one of {', '.join(INPUT_SCALINGS)}"
            )
        if cfg.init_log_std < cfg.min_log_std:
            raise OmbrlError(
                f"init_log_std {cfg.init_log_std} is below min_log_std {cfg.min_log_std}"
            )
        if cfg.value_targets not in VALUE_TARGETS:
            raise OmbrlError(
                f"value_targets: {cfg.value_targets!r} is not one of {', '.join(VALUE_TARGETS)}"
            )
        self.obs_mean = torch.zeros(obs_dim, device=self.device)
        self.obs_std = torch.ones(obs_dim, device=self.device)
        if obs_mean is not None or obs_std is not None:
            mean = torch.as_tensor(obs_mean, dtype=torch.float32).reshape(-1)
            std = torch.as_tensor(obs_std, dtype=torch.float32).reshape(-1)
            if mean.shape != (obs_dim,) or std.shape != (obs_dim,):
                raise OmbrlError(f"obs_mean / obs_std must have {obs_dim} entries")
            self.obs_mean, self.obs_std = mean.to(self.device), std.to(self.device)
        elif cfg.input_scaling != "none":
            raise OmbrlError(f"input_scaling {cfg.input_scaling} needs the input's shift and scale")
        self.generator = torch.Generator(self.device).manual_seed(seed)
        init = torch.Generator().manual_seed(seed)  # CPU: weights are drawn before moving
        self.mean_net = TanhMLP(obs_dim, cfg.hidden_size, act_dim, 0.01, init).to(self.device)
        self.log_std = torch.full((act_dim,), float(cfg.init_log_std), device=self.device)
        self.value_net = StackedMLP(1, obs_dim + TIME_POWERS, cfg.value_hidden_size, 1, init).to(
            self.device
        )
        self.value_optim = torch.optim.Adam(
            self.value_net.parameters(),
            lr=cfg.value_lr,
            weight_decay=cfg.value_weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.step = 0

    # ----------------------------------------------------------------- networks
    def scale_obs(self, obs: Tensor) -> Tensor:
        """The policy's (and the baseline's) input, `(obs - obs_mean) / obs_std`."""
        return (obs - self.obs_mean) / self.obs_std

    def policy(self, obs: Tensor, deterministic: bool) -> Tensor:
        """Actions B x act_dim for observations B x obs_dim, without gradients.

        The mean action when `deterministic`, else a Gaussian sample (noise from the agent's
        generator). Not clipped to the action bounds.
        """
        with torch.no_grad():
            mean = self.mean_net(self.scale_obs(obs))
            if deterministic:
                return mean
            noise = torch.randn(mean.shape, generator=self.generator, device=self.device)
            return mean + torch.exp(self.log_std) * noise

    def value_features(self, obs: Tensor, time: Tensor) -> Tensor:
        """`[clip(x, -10, 10) / 10, tau, tau^2, tau^3, tau^4]`: x the scaled observation,
        tau = t / value_time_scale."""
        powers = torch.stack([time**k for k in range(1, TIME_POWERS + 1)], dim=-1)
        return torch.cat([self.scale_obs(obs).clamp(-10.0, 10.0) / 10.0, powers], dim=-1)

    def value(self, obs: Tensor, time: Tensor) -> Tensor:
        """Baseline V(s, t) of B states at times `time` (t / value_time_scale, B)."""
        out, _ = self.value_net(self.value_features(obs, time).unsqueeze(0))
        return out[0, :, 0]

    # ------------------------------------------------------------------ update
    def prepare(self, paths: Paths) -> PathBatch:
        """Advantages (GAE with the current baseline) and returns of every valid step."""
        cfg = self.cfg
        n, t_max = paths.mask.shape
        scale = cfg.value_time_scale
        time = torch.arange(t_max, device=self.device).float().expand(n, -1) / scale
        with torch.no_grad():
            values = torch.zeros(n, t_max, device=self.device)
            values[paths.mask] = self.value(paths.obs[paths.mask], time[paths.mask])
            last = self.value(paths.last_obs, paths.last_time.float() / scale)
            last = torch.where(paths.terminal, 0.0, last)
            adv = gae(paths.rew, paths.mask, values, last, cfg.gamma, cfg.gae_lambda)
            after = last if cfg.value_targets == "bootstrapped" else torch.zeros_like(last)
            ret = gae(paths.rew, paths.mask, torch.zeros_like(values), after, cfg.gamma, 1.0)
        adv, ret = adv[paths.mask], ret[paths.mask]
        if adv.numel() == 0:
            raise OmbrlError("NPG update: the paths have no valid steps")
        mean = adv.mean()
        std = adv.std(correction=0)
        stats = {"advantage_mean": mean.item(), "advantage_std": std.item()}
        return PathBatch(
            obs=paths.obs[paths.mask],
            act=paths.act[paths.mask],
            time=time[paths.mask],
            advantages=(adv - mean) / (std + 1e-6),
            returns=ret,
            stats=stats,
        )

    def _flat_params(self) -> Tensor:
        return torch.cat(
            [*(p.detach().reshape(-1) for p in self.mean_net.parameters()), self.log_std]
        )

    def _set_flat_params(self, flat: Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p in self.mean_net.parameters():
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
            self.log_std.copy_(flat[offset:].clamp_min(self.cfg.min_log_std))

    def fisher_vector_product(self, obs: Tensor) -> Callable[[Tensor], Tensor]:
        """`v -> (F + cg_damping I) v`, F the mean Fisher of the policy over states `obs`.

        Args:
            obs: M x obs_dim states (raw).

        Returns:
            The product on flat parameter vectors (mean network's, then the log-std).
        """
        x = self.scale_obs(obs)
        with torch.no_grad():
            inputs = self.mean_net.activations(x)
            params = [p.detach() for p in self.mean_net.parameters()]
            sizes = [p.numel() for p in params]
            inv_var = torch.exp(-2 * self.log_std) / x.shape[0]
        damping = self.cfg.cg_damping
        split = sum(sizes)

        def fvp(v: Tensor) -> Tensor:
            with torch.no_grad():
                parts = torch.split(v[:split], sizes)
                tangents = [part.view_as(p) for part, p in zip(parts, params, strict=True)]
                jv = self.mean_net.jvp(inputs, tangents)
                grads = self.mean_net.vjp(inputs, jv * inv_var)
                mean_part = torch.cat([g.reshape(-1) for g in grads])
                return torch.cat([mean_part, 2.0 * v[split:]]) + damping * v

        return fvp

    def policy_step(self, batch: PathBatch) -> dict[str, float]:
        """One natural-gradient step of the policy on `batch`.

        Returns:
            surrogate_before, surrogate_after (`mean(pi/pi_old * A)`), kl (mean KL(old || new)
            after the step), alpha (the step's scale), npg_gFg (g^T F^-1 g), log_std (mean).
        """
        x = self.scale_obs(batch.obs)
        adv = batch.advantages
        with torch.no_grad():
            old_mean = self.mean_net(x)
            old_log_std = self.log_std.clone()
            old_logp = gaussian_log_prob(batch.act, old_mean, old_log_std)
        params = [*self.mean_net.parameters()]
        log_std = self.log_std.clone().requires_grad_(True)
        logp = gaussian_log_prob(batch.act, self.mean_net(x), log_std)
        surrogate = (torch.exp(logp - old_logp) * adv).mean()
        grads = torch.autograd.grad(surrogate, [*params, log_std])
        g = torch.cat([gr.reshape(-1) for gr in grads]).detach()
        with torch.no_grad():
            direction = conjugate_gradient(
                self.fisher_vector_product(batch.obs), g, self.cfg.cg_iters
            )
            g_f_g = g.dot(direction)
            alpha = torch.sqrt(self.cfg.step_size / (g_f_g.abs() + 1e-20))
            self._set_flat_params(self._flat_params() + alpha * direction)
            new_mean = self.mean_net(x)
            new_logp = gaussian_log_prob(batch.act, new_mean, self.log_std)
            surrogate_after = (torch.exp(new_logp - old_logp) * adv).mean()
            kl = gaussian_kl(old_mean, old_log_std, new_mean, self.log_std).mean()
        values = torch.stack(
            [surrogate.detach(), surrogate_after, kl, alpha, g_f_g, self.log_std.mean()]
        ).tolist()
        names = ("surrogate_before", "surrogate_after", "kl", "alpha", "npg_gFg", "log_std")
        return dict(zip(names, values, strict=True))

    def fit_value(self, batch: PathBatch) -> dict[str, float]:
        """Fit the baseline to `batch.returns`: `value_epochs` shuffled passes of Adam.

        Returns:
            value_loss_before, value_loss_after (MSE over the whole batch).
        """
        cfg = self.cfg
        features = self.value_features(batch.obs, batch.time).unsqueeze(0)
        target = batch.returns
        with torch.no_grad():
            before = (self.value_net(features)[0][0, :, 0] - target).square().mean()
        m = target.shape[0]
        for _ in range(cfg.value_epochs):
            order = torch.randperm(m, generator=self.generator, device=self.device)
            for start in range(0, m, cfg.value_batch_size):
                rows = order[start : start + cfg.value_batch_size]
                pred = self.value_net(features[:, rows])[0][0, :, 0]
                loss = (pred - target[rows]).square().mean()
                self.value_optim.zero_grad(set_to_none=True)
                loss.backward()
                self.value_optim.step()
        with torch.no_grad():
            after = (self.value_net(features)[0][0, :, 0] - target).square().mean()
        return {"value_loss_before": before.item(), "value_loss_after": after.item()}

    def update(self, paths: Paths) -> dict[str, float]:
        """One NPG iteration on `paths`: advantages, the policy step, then the baseline fit.

        Returns:
            The metrics of `policy_step` and `fit_value`, advantage_mean and advantage_std
            (before normalising), and the paths' `statistics()`.
        """
        batch = self.prepare(paths)
        metrics = {**paths.statistics(), **batch.stats}
        metrics.update(self.policy_step(batch))
        metrics.update(self.fit_value(batch))
        self.step += 1
        return metrics

    def bc_init(self, obs: Tensor, act: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Behaviour cloning of the policy mean: MSE to the dataset's actions (clipped to the
        bounds), `bc_steps` minibatches of `bc_batch_size` in shuffled passes over the data
        (a pass's last minibatch may be smaller), a fresh Adam (`bc_lr`). The log-std is left
        as it is. Steps, not epochs: mjrl's and J-MOReL's 5 epochs of `int(N / 256)` full
        minibatches over 1M transitions are 19,530 steps, whatever the size of the data here.

        Args:
            obs: N x obs_dim dataset states.
            act: N x act_dim their actions.
            generator: the minibatch order (on this agent's device).

        Returns:
            bc_loss_before, bc_loss_after: MSE over the whole data.
        """
        cfg = self.cfg
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        act = torch.as_tensor(act, dtype=torch.float32, device=self.device)
        low = torch.as_tensor(self.action_low, device=self.device)
        high = torch.as_tensor(self.action_high, device=self.device)
        act = act.clamp(low, high)
        x = self.scale_obs(obs)
        optim = torch.optim.Adam(self.mean_net.parameters(), lr=cfg.bc_lr)
        with torch.no_grad():
            before = (self.mean_net(x) - act).square().mean()
        n, done = obs.shape[0], 0
        while done < cfg.bc_steps:
            order = torch.randperm(n, generator=generator, device=self.device)
            for start in range(0, n, cfg.bc_batch_size):
                if done == cfg.bc_steps:
                    break
                rows = order[start : start + cfg.bc_batch_size]
                loss = (self.mean_net(x[rows]) - act[rows]).square().mean()
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                done += 1
        with torch.no_grad():
            after = (self.mean_net(x) - act).square().mean()
        return {"bc_loss_before": before.item(), "bc_loss_after": after.item()}

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Tensor]:
        """Policy, log-std, baseline, observation scaling, the baseline's Adam state, step
        count and generator state, as flat named tensors."""
        return {
            **{f"policy.{k}": v for k, v in self.mean_net.state_dict().items()},
            "log_std": self.log_std.clone(),
            **{f"value.{k}": v for k, v in self.value_net.state_dict().items()},
            "obs_mean": self.obs_mean.clone(),
            "obs_std": self.obs_std.clone(),
            "step": torch.tensor(self.step, dtype=torch.int64),
            "generator": self.generator.get_state(),
            **optimizer_tensors("value_optim", self.value_optim),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned (tensors may be on any device).

        Raises:
            OmbrlError: the state belongs to a different architecture.
        """
        check_keys(set(self.state_dict()), state, "NPG", ("value_optim",))
        # Copies: the optimiser would otherwise keep (and step) the caller's tensors in place.
        state = {k: v.clone() for k, v in state.items()}
        for name, module in (("policy", self.mean_net), ("value", self.value_net)):
            part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            try:
                module.load_state_dict(part)
            except RuntimeError as err:
                raise OmbrlError(f"NPG state does not match the {name} network: {err}") from err
        for name in ("log_std", "obs_mean", "obs_std"):
            mine = getattr(self, name)
            if state[name].shape != mine.shape:
                raise OmbrlError(
                    f"NPG state does not match: {name} has shape {tuple(state[name].shape)}, "
                    f"expected {tuple(mine.shape)}"
                )
            mine.copy_(state[name])
        self.step = int(state["step"])
        self.generator.set_state(state["generator"].cpu())
        load_optimizer_tensors("value_optim", self.value_optim, state)
