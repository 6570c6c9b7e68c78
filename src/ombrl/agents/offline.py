"""What the model-free offline learners (TD3+BC, IQL, CQL) share: state normalisation kept in
the policy's own tensors, target-network updates, and the state-dict plumbing.

State normalisation (TD3+BC's and IQL's default): every observation the networks see is
`(obs - mean) / std` with the dataset's per-dimension mean and std (+ 1e-3, as the TD3+BC
authors' code). The statistics are tensors of the agent's `state_dict`, so policy.safetensors
carries them and a loaded policy (`ombrl render`, evaluation) normalises as it was trained;
`provenance` records in policy.json whether it did. Without normalisation they stay 0 and 1.

The updates use autograd: these methods are references run beside the model-based ones, and
the losses written as the papers state them are easier to check (tests/test_model_free.py
compares each with an independent computation) than hand-written gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ombrl.agents.base import Agent, check_keys
from ombrl.checkpoint import load_optimizer_tensors, optimizer_tensors
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError

#: Added to the dataset's state std before dividing (TD3+BC's code, `eps = 1e-3`).
STD_EPS = 1e-3


class OfflineAgent(Agent):
    """Base of the model-free offline learners.

    Subclasses build their networks, list them in `modules` (name -> module, saved and
    restored) and `optimizers` (name -> optimiser), start with `_start(seed)`, and implement
    `_policy(normalized_obs, deterministic)` and `update`. Attributes named in `tensors` are
    saved and restored as they are.
    """

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    generator: torch.Generator
    tensors: tuple[str, ...] = ("obs_mean", "obs_std")

    def _start(self, seed: int) -> torch.Generator:
        """Identity state normalisation, step 0 and the policy-noise generator; returns the CPU
        generator the subclass draws its initial weights from (drawn before moving)."""
        self.obs_mean = torch.zeros(self.obs_dim, device=self.device)
        self.obs_std = torch.ones(self.obs_dim, device=self.device)
        self.step = 0
        self.generator = torch.Generator(self.device).manual_seed(seed)
        return torch.Generator().manual_seed(seed)

    def prepare(self, dataset: Dataset) -> None:
        """Fit what the agent derives from the dataset before training: the state statistics
        when `cfg.normalize_states` is set.

        Raises:
            OmbrlError: a state dimension with non-finite statistics.
        """
        if not self.cfg.normalize_states:
            return
        obs = torch.as_tensor(dataset.observations, dtype=torch.float64)
        mean, std = obs.mean(0), obs.std(0, correction=0) + STD_EPS
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise OmbrlError("the dataset's observations have non-finite mean or std")
        self.obs_mean = mean.to(self.device, torch.float32)
        self.obs_std = std.to(self.device, torch.float32)

    @property
    def provenance(self) -> dict:
        """What policy.json records beyond the config: how observations were normalised."""
        normalized = bool(self.cfg.normalize_states)
        return {"state_normalization": "dataset mean/std" if normalized else "none"}

    def normalize(self, obs: Tensor) -> Tensor:
        """Observations as the networks see them."""
        return (obs - self.obs_mean) / self.obs_std

    def policy(self, obs: Tensor, deterministic: bool) -> Tensor:
        """Actions B x act_dim for raw observations B x obs_dim, without gradients."""
        with torch.no_grad():
            return self._policy(self.normalize(obs), deterministic)

    def _policy(self, obs: Tensor, deterministic: bool) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        """Every tensor needed to act (networks, state statistics) and to resume (targets,
        optimisers, step count, noise generator)."""
        state = {
            f"{name}.{key}": value
            for name, module in self.modules.items()
            for key, value in module.state_dict().items()
        }
        for name, optimizer in self.optimizers.items():
            state.update(optimizer_tensors(name, optimizer))
        return {
            **state,
            **{name: getattr(self, name) for name in self.tensors},
            "step": torch.tensor(self.step, dtype=torch.int64),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned (tensors may be on any device).

        Raises:
            OmbrlError: the state belongs to another method, architecture or config.
        """
        what = type(self).__name__
        check_keys(set(self.state_dict()), state, what, tuple(self.optimizers))
        for name, module in self.modules.items():
            part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            try:
                module.load_state_dict(part)
            except RuntimeError as err:
                raise OmbrlError(f"{what} state does not match the {name}: {err}") from err
        for name in self.tensors:
            setattr(self, name, state[name].to(self.device, torch.float32))
        self.step = int(state["step"])
        self.generator.set_state(state["generator"].cpu())
        for name, optimizer in self.optimizers.items():
            load_optimizer_tensors(name, optimizer, state)


def polyak(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau online, parameter by parameter."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: a copy of `module` that autograd ignores."""
    import copy

    return copy.deepcopy(module).requires_grad_(False)
