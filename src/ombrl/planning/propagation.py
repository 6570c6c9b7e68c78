"""Uncertainty propagation: moving particles through a dynamics ensemble (PETS).

PETS scores an action sequence by pushing `N` particles per candidate through the learned
dynamics. Every step costs ONE batched ensemble call for the whole population. `step` takes
particles as `P x N x obs` (candidate, particle); a planner keeps them in the members' layout
instead (`start`, `advance`: `E x (P N / E) x obs` for trajectory sampling), so TSinf moves
no particle between steps.

Model types (upstream `-ca model-type`):
- D, P: one network, deterministic or probabilistic: the ensemble's best member
  (`elites[0]`), copied into a one-member ensemble;
- DE, PE: the whole ensemble, deterministic or probabilistic.
P and PE need a probabilistic ensemble; D and DE on a probabilistic one ignore its variance.

Propagation types (upstream `-ca prop-type`), per step and per candidate:
- E (expectation): the members' outputs taken as one Gaussian (mean of the means; variance
  `mean(var) + var(means)`), and its mean propagated. Deterministic, so one particle is run
  per candidate (upstream forces `npart = 1`).
- DS (distribution sampling): each particle's next state sampled from that one Gaussian.
- TS1: particles split evenly among the members; each particle's member drawn anew every
  step (a random permutation of the candidate's particles, as upstream), then sampled from
  that member's Gaussian (its mean for deterministic models).
- TSinf: particle j keeps member `j // (N / E)` for the whole trajectory.
- MM (moment matching, upstream `MPC._predict_next_obs`, MPC.py:339-349): each particle's
  change of state sampled as in DS, one Gaussian (per-dimension mean and variance) refitted to
  the candidate's sampled changes, and every particle's change resampled from it and added to
  that particle's own state (upstream's model predicts changes, `targ_proc`, and
  `obs_postproc` adds them). The particles' states are not refitted: only their next step.

Upstream's restrictions apply (`check_types`): TS needs an ensemble (DE, PE), D only E, and
DE has no variance to sample (not DS or MM).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble, angle_features

PROP_TYPES = ("E", "DS", "TS1", "TSinf", "MM")
MODEL_TYPES = ("D", "P", "DE", "PE")


def check_types(model_type: str, prop_type: str) -> None:
    """Reject unknown names and combinations upstream does not allow.

    Raises:
        OmbrlError: naming the key and the allowed values.
    """
    if model_type not in MODEL_TYPES:
        raise OmbrlError(f"model_type: {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    if prop_type not in PROP_TYPES:
        raise OmbrlError(f"prop_type: {prop_type!r} is not one of {', '.join(PROP_TYPES)}")
    if prop_type.startswith("TS") and model_type not in ("DE", "PE"):
        raise OmbrlError(f"prop_type {prop_type} samples members: needs model_type DE or PE")
    if model_type == "D" and prop_type != "E":
        raise OmbrlError(f"model_type D has no variance to propagate: prop_type E, not {prop_type}")
    if model_type == "DE" and prop_type in ("DS", "MM"):
        raise OmbrlError(
            f"model_type DE has no variance to sample: prop_type E, TS1 or TSinf, not {prop_type}"
        )


def single_member(ensemble: DynamicsEnsemble, member: int) -> DynamicsEnsemble:
    """A one-member ensemble holding a copy of `ensemble`'s member `member`."""
    one = DynamicsEnsemble(**{**ensemble.architecture, "num_models": 1})
    state = {}
    for name, value in ensemble.state_dict().items():
        member_dim = value.dim() == 3 and value.shape[0] == ensemble.num_models
        state[name] = value[member : member + 1].clone() if member_dim else value.clone()
    one.load_state_dict(state)
    return one.to(ensemble.input_mean.device).eval()


def check_model_source(model_type: str, probabilistic: bool, name: str) -> None:
    """P and PE plan with predicted variances: refuse them from a deterministic ensemble
    (`name` says which, in the message).

    Raises:
        OmbrlError: P or PE with `probabilistic` false.
    """
    if model_type.startswith("P") and not probabilistic:
        raise OmbrlError(
            f"model_type {model_type} needs a probabilistic ensemble ({name} is deterministic)"
        )


def planning_model(ensemble: DynamicsEnsemble, model_type: str) -> DynamicsEnsemble:
    """The network(s) a model type plans with (see the module docstring).

    Raises:
        OmbrlError: P or PE with a deterministic ensemble, or an unknown model type.
    """
    if model_type not in MODEL_TYPES:
        raise OmbrlError(f"model_type: {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    check_model_source(model_type, ensemble.probabilistic, "this one")
    if len(model_type) == 1:
        return single_member(ensemble, ensemble.elites[0])
    return ensemble


class PlanningNet:
    """A frozen, lean copy of an ensemble for planning: `(s, a) -> (next-state mean, std)`.

    The same function as `DynamicsEnsemble.predict` (tested to float tolerance), with fewer
    kernels per call, which is what a planner's thousands of small calls per action pay for:
    the input standardisation is folded into the first layer (`W' = W / std_in`,
    `b' = b - (mean_in / std_in) W`), the delta de-normalisation into the head's mean
    columns, activations run in place, and no `nn.Module` dispatch (the angles' sine and cosine,
    `angle_dims`, are computed before the first layer). Rebuild it after the
    ensemble's weights change (`make_agent` does, every iteration).

    Args:
        model: the ensemble (or one-member copy) to plan with.
    """

    def __init__(self, model: DynamicsEnsemble) -> None:
        with torch.no_grad():
            layers = [*model.hidden, model.head]
            weights = [layer.weight.detach().clone() for layer in layers]
            biases = [layer.bias.detach().clone() for layer in layers]
            in_mean, in_std = model.input_mean, model.input_std
            biases[0] = biases[0] - ((in_mean / in_std) @ weights[0]).unsqueeze(-2)
            weights[0] = weights[0] / in_std.unsqueeze(-1)
            d, out = model.obs_dim, model.out_dim
            t_mean, t_std = model.target_mean[:d], model.target_std[:d]
            # Keep only the next-state columns of the head (no reward, no unused log-variance).
            cols = [*range(d), *(range(out, out + d) if model.probabilistic else ())]
            weights[-1], biases[-1] = weights[-1][..., cols], biases[-1][..., cols]
            weights[-1][..., :d] *= t_std
            biases[-1][..., :d] = biases[-1][..., :d] * t_std + t_mean
        self.weights, self.biases = weights, biases
        self.probabilistic = model.probabilistic
        self.swish = model.activation == "swish"
        self.num_models, self.obs_dim = model.num_models, model.obs_dim
        self.angle_dims = model.angle_dims
        if model.probabilistic:
            self.max_logvar = model.max_logvar.detach()[..., :d].clone()
            self.min_logvar = model.min_logvar.detach()[..., :d].clone()
            self.log_std_scale = torch.log(t_std)
        self.device = model.input_mean.device

    def __call__(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor | None]:
        """Next-state mean and standard deviation (None if deterministic), raw units.

        Args:
            obs: E x B x obs_dim, or B x obs_dim (every member sees it).
            act: E x B x act_dim, or B x act_dim.

        Returns:
            mean E x B x obs_dim (`s + delta`) and std E x B x obs_dim or None.
        """
        h = torch.cat([angle_features(obs, self.angle_dims), act], dim=-1)
        if h.dim() == 2:
            h = h.expand(self.num_models, *h.shape)
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = torch.baddbmm(b, h, w)
            h = torch.nn.functional.silu(h, inplace=True) if self.swish else h.relu_()
        out = torch.baddbmm(self.biases[-1], h, self.weights[-1])
        d = self.obs_dim
        mean = out[..., :d] + obs
        if not self.probabilistic:
            return mean, None
        logvar = out[..., d:]
        logvar = self.max_logvar - torch.nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + torch.nn.functional.softplus(logvar - self.min_logvar)
        return mean, torch.exp(0.5 * logvar + self.log_std_scale)


class Propagator:
    """Moves every particle of every candidate one step with one ensemble call.

    Args:
        model: the planning model (`planning_model`); E members.
        prop_type: one of `PROP_TYPES`.
        num_particles: N particles per candidate (TS1/TSinf: a multiple of E; E runs one).
        use_variance: sample from the predicted variance (False for D and DE).
        generator: source of every random number.
    """

    def __init__(
        self,
        model: DynamicsEnsemble,
        prop_type: str,
        num_particles: int,
        use_variance: bool,
        generator: torch.Generator,
    ) -> None:
        if prop_type not in PROP_TYPES:
            raise OmbrlError(f"prop_type: {prop_type!r} is not one of {', '.join(PROP_TYPES)}")
        e = model.num_models
        if prop_type.startswith("TS") and num_particles % e:
            raise OmbrlError(
                f"particles: {num_particles} must be a multiple of the ensemble size ({e}) "
                f"for {prop_type}"
            )
        if use_variance and not model.probabilistic:
            raise OmbrlError("use_variance needs a probabilistic model")
        self.model, self.prop_type = model, prop_type
        self.net = PlanningNet(model)
        self.num_particles = 1 if prop_type == "E" else num_particles
        self.use_variance = use_variance
        self.generator = generator

    @property
    def groups(self) -> int:
        """G in the `G x R x obs` particle layout: E for TS1/TSinf, else 1."""
        return self.model.num_models if self.prop_type.startswith("TS") else 1

    def start(self, obs: Tensor, candidates: int) -> Tensor:
        """Every particle of `candidates` candidates at `obs` (obs_dim), in the layout of `advance`.

        The layout is `G x R x obs`. TS1/TSinf: G = E, one group per member, row `p k + i` of
        group g holding candidate p's particle `g k + i` (k = N / E), so TSinf's particles stay
        with their member for the whole trajectory without any reshuffling. E, DS, MM: G = 1,
        row `p N + j` holding candidate p's particle j.
        """
        g = self.groups
        return obs.expand(g, candidates * self.num_particles // g, obs.shape[-1])

    def actions(self, actions: Tensor) -> Tensor:
        """The candidates' actions for each of their particles, in the layout of `start`.

        Args:
            actions: P x act (one step) or P x H x act (a whole plan).

        Returns:
            G x R x act, or H x G x R x act.
        """
        g = self.groups
        x = actions.movedim(0, -2)  # ... x P x act
        *lead, p, a = x.shape
        k = self.num_particles // g
        return x[..., None, :, None, :].expand(*lead, g, p, k, a).reshape(*lead, g, p * k, a)

    def candidate_mean(self, values: Tensor) -> Tensor:
        """The mean over each candidate's particles of per-particle values (G x R -> P)."""
        g = values.shape[0]
        return values.view(g, -1, self.num_particles // g).mean(dim=(0, 2))

    def to_layout(self, states: Tensor) -> Tensor:
        """P x N x obs (candidate, particle) -> the `G x R x obs` layout."""
        p, n, d = states.shape
        g = self.groups
        return states.view(p, g, n // g, d).transpose(0, 1).reshape(g, -1, d)

    def from_layout(self, states: Tensor) -> Tensor:
        """The `G x R x obs` layout -> P x N x obs."""
        g, r, d = states.shape
        k = self.num_particles // g
        return states.view(g, r // k, k, d).transpose(0, 1).reshape(r // k, g * k, d)

    def _noise(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.generator).to(like)

    def _sample(self, mean: Tensor, std: Tensor | None) -> Tensor:
        if std is None or not self.use_variance:
            return mean
        return mean.addcmul_(self._noise(mean), std)

    def step(self, states: Tensor, actions: Tensor) -> Tensor:
        """Next states of every particle.

        Args:
            states: P x N x obs (candidate, particle).
            actions: P x act, the candidates' actions at this step.

        Returns:
            P x N x obs.
        """
        return self.from_layout(self.advance(self.to_layout(states), self.actions(actions)))

    def advance(self, states: Tensor, actions: Tensor) -> Tensor:
        """`step` in the particle layout (`start`): G x R x obs states and G x R x act
        actions -> G x R x obs next states. One ensemble call."""
        if self.prop_type == "TSinf":
            return self._sample(*self.net(states, actions))
        if self.prop_type == "TS1":
            return self._ts1(states, actions)
        g, r, d = states.shape
        means, stds = self.net(states[0], actions[0])
        mean = means.mean(dim=0)
        if self.prop_type == "E":
            return mean.unsqueeze(0)
        # DS, MM: the members' outputs as one Gaussian: mean(var) + var(means).
        std = None
        if stds is not None and self.use_variance:
            std = (stds.square().mean(dim=0) + means.var(dim=0, correction=0)).sqrt()
        sampled = self._sample(mean, std)
        if self.prop_type == "DS":
            return sampled.unsqueeze(0)
        # MM: one Gaussian per candidate refitted to its particles' sampled changes, resampled,
        # and added to each particle's own state.
        deltas = (sampled - states[0]).view(r // self.num_particles, self.num_particles, d)
        fit_mean = deltas.mean(dim=1, keepdim=True)
        fit_var = deltas.var(dim=1, correction=0, keepdim=True)
        resampled = fit_mean + self._noise(deltas) * fit_var.sqrt()
        return (states[0] + resampled.view(r, d)).unsqueeze(0)

    def _ts1(self, states: Tensor, actions: Tensor) -> Tensor:
        """TS1: a random permutation of each candidate's particles among the member slots of
        the layout every step; each particle goes back to its own slot afterwards."""
        states = self.from_layout(states)
        p, n, d = states.shape
        perm = torch.argsort(torch.rand(p, n, generator=self.generator), dim=1)
        index = perm.to(states.device).unsqueeze(-1).expand(p, n, d)
        moved = self.to_layout(states.gather(1, index))
        out = self.from_layout(self._sample(*self.net(moved, actions)))
        return self.to_layout(torch.empty_like(out).scatter_(1, index, out))
