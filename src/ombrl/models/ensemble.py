"""A batched ensemble of dynamics models: every member lives in the same tensors.

Each layer holds the weights of all E members as one `E x in x out` tensor and runs one
`torch.baddbmm`, so an ensemble step costs one kernel per layer instead of E (upstream
dynamics-ensembles-rl trained its members one after another). Members never share
parameters, so a member's output and gradient depend only on its own slice.

The network works in normalised space: inputs (s, a) are standardised, targets are the
standardised delta `s' - s` (plus the reward when `predict_reward`). `predict` converts back
to raw units, including the `+ 2 log(scale)` a log-variance needs (upstream forgot it).
An ensemble with `angle_dims` (PETS's per-task `obs_preproc`) sees each of those observation
columns as its sine and cosine instead (`model_inputs`); its targets stay `s' - s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ombrl.errors import OmbrlError
from ombrl.io import load_model, save_model

ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU}
ARCHITECTURE_KEYS = (
    "obs_dim",
    "act_dim",
    "hidden_size",
    "num_models",
    "probabilistic",
    "activation",
    "predict_reward",
)
# Written into a model file's architecture only when set (PETS), so every other ensemble's
# file is what it was before the key existed; absent means none.
OPTIONAL_ARCHITECTURE_KEYS = ("angle_dims",)
# Weight of the soft-bound regulariser `0.01 * (sum max - sum min)` (PETS).
LOGVAR_BOUND_COEF = 0.01
# Initial-weight schemes of `EnsembleLinear` (the ensemble config's `init`).
INITS = ("pets", "torch")


class EnsembleLinear(nn.Module):
    """E independent linear layers computed with one batched matmul.

    Two initialisations (`init`):
    - "pets" (handful-of-trials): weights from a normal with std `1 / (2 sqrt(in))` truncated
      at two standard deviations, biases zero. It keeps the pre-activations of a deep
      swish/relu stack at a similar scale per layer.
    - "torch": what each upstream dynamics-ensembles-rl member got from `nn.Linear`, weights
      and biases uniform in `+-1 / sqrt(in)` (kaiming-uniform with a = sqrt(5)).

    Args:
        num_models: E, the number of members.
        in_features: input width.
        out_features: output width.
        init: "pets" or "torch".
    """

    def __init__(
        self, num_models: int, in_features: int, out_features: int, init: str = "pets"
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise OmbrlError(f"init: {init!r} is not one of {list(INITS)}")
        self.num_models = num_models
        self.in_features = in_features
        self.out_features = out_features
        self.init = init
        self.weight = nn.Parameter(torch.empty(num_models, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_models, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw fresh weights (from `generator`, or torch's global RNG when None)."""
        with torch.no_grad():
            if self.init == "pets":
                std = 1.0 / (2.0 * math.sqrt(self.in_features))
                nn.init.trunc_normal_(
                    self.weight, std=std, a=-2 * std, b=2 * std, generator=generator
                )
                self.bias.zero_()
            else:
                bound = 1.0 / math.sqrt(self.in_features)
                self.weight.uniform_(-bound, bound, generator=generator)
                self.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        """Apply member m's layer to x[m].

        Args:
            x: E x B x in (a stride-0 expanded E dimension is fine); K x B x in with `members`.
            members: K member indices to run (None: all E).

        Returns:
            E x B x out (K x B x out).
        """
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[members], x, self.weight[members])

    def extra_repr(self) -> str:
        return f"num_models={self.num_models}, in={self.in_features}, out={self.out_features}"


@dataclass
class Prediction:
    """Next-state (and reward) predictions of every member, in raw units.

    Attributes:
        next_obs_mean: E x B x obs_dim, `s + delta`.
        next_obs_var: E x B x obs_dim predicted variance, or None for a deterministic model.
        reward_mean: E x B, or None when the model does not predict rewards.
        reward_var: E x B, or None (deterministic model or no reward head).
    """

    next_obs_mean: Tensor
    next_obs_var: Tensor | None
    reward_mean: Tensor | None
    reward_var: Tensor | None


def angle_features(obs: Tensor, angle_dims: tuple[int, ...]) -> Tensor:
    """`obs` (`... x obs`) with each column in `angle_dims` replaced, in its place, by its sine
    and cosine (`... x (obs + len(angle_dims))`): upstream handful-of-trials' `obs_preproc`
    (config/cartpole.py, halfcheetah.py), so the model never sees an angle's wrap-around."""
    if not angle_dims:
        return obs
    parts, start = [], 0
    for i in angle_dims:
        angle = obs[..., i : i + 1]
        parts += [obs[..., start:i], torch.sin(angle), torch.cos(angle)]
        start = i + 1
    parts.append(obs[..., start:])
    return torch.cat(parts, dim=-1)


class DynamicsEnsemble(nn.Module):
    """An ensemble of MLPs predicting the normalised delta `s' - s` (and the reward).

    Weights are drawn from torch's global RNG: seed it (the job's seed) before construction.
    `init` only chooses how (see `EnsembleLinear`); it is not part of `architecture`, since a
    saved model's weights replace the initial ones.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        hidden_size: width of each hidden layer (may be empty: a linear model).
        num_models: E, the number of members.
        probabilistic: predict a Gaussian (mean and log-variance) instead of a point.
        activation: "swish" or "relu".
        predict_reward: add the reward as the last target dimension.
        init: initial weights, "pets" or "torch" (the ensemble config's `init`).
        angle_dims: observation columns the network sees as sine and cosine
            (`angle_features`), increasing; empty: the raw observation.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_size: list[int],
        num_models: int,
        probabilistic: bool,
        activation: str,
        predict_reward: bool,
        init: str = "pets",
        angle_dims: tuple[int, ...] | list[int] = (),
    ) -> None:
        super().__init__()
        angle_dims = tuple(angle_dims)
        if list(angle_dims) != sorted(set(angle_dims)) or not all(
            0 <= i < obs_dim for i in angle_dims
        ):
            raise OmbrlError(
                f"angle_dims: {list(angle_dims)} must be increasing columns of the {obs_dim} "
                "observation dimensions"
            )
        if activation not in ACTIVATIONS:
            raise OmbrlError(f"activation: {activation!r} is not one of {sorted(ACTIVATIONS)}")
        if num_models < 1:
            raise OmbrlError(f"num_models: {num_models} must be at least 1")
        if obs_dim < 1 or act_dim < 1 or any(h < 1 for h in hidden_size):
            raise OmbrlError(
                f"obs_dim {obs_dim}, act_dim {act_dim} and hidden_size {hidden_size} "
                "must all be positive"
            )
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.hidden_size = list(hidden_size)
        self.num_models = num_models
        self.probabilistic = probabilistic
        self.activation = activation
        self.predict_reward = predict_reward
        self.angle_dims = angle_dims
        self.in_dim = obs_dim + len(angle_dims) + act_dim
        self.out_dim = obs_dim + int(predict_reward)
        self.elites: list[int] = list(range(num_models))

        widths = [self.in_dim, *self.hidden_size]
        self.hidden = nn.ModuleList(
            EnsembleLinear(num_models, i, o, init)
            for i, o in zip(widths[:-1], widths[1:], strict=True)
        )
        self.act = ACTIVATIONS[activation]()
        head_out = 2 * self.out_dim if probabilistic else self.out_dim
        self.head = EnsembleLinear(num_models, widths[-1], head_out, init)
        if probabilistic:
            # One pair of bounds per member, so no parameter couples members.
            self.max_logvar = nn.Parameter(torch.full((num_models, 1, self.out_dim), 0.5))
            self.min_logvar = nn.Parameter(torch.full((num_models, 1, self.out_dim), -10.0))

        self.register_buffer("input_mean", torch.zeros(self.in_dim))
        self.register_buffer("input_std", torch.ones(self.in_dim))
        self.register_buffer("target_mean", torch.zeros(self.out_dim))
        self.register_buffer("target_std", torch.ones(self.out_dim))

    @property
    def architecture(self) -> dict:
        """The constructor arguments, as stored in model files (`angle_dims` only when set)."""
        arch = {key: getattr(self, key) for key in ARCHITECTURE_KEYS}
        if self.angle_dims:
            arch["angle_dims"] = list(self.angle_dims)
        return arch

    @property
    def num_layers(self) -> int:
        """Number of weight layers (hidden + output): the length of a weight-decay list."""
        return len(self.hidden) + 1

    def set_normalizers(
        self, input_mean: Tensor, input_std: Tensor, target_mean: Tensor, target_std: Tensor
    ) -> None:
        """Store the statistics used to (de)normalise inputs (`in`) and targets (`out`)."""
        for name, value in (
            ("input_mean", input_mean),
            ("input_std", input_std),
            ("target_mean", target_mean),
            ("target_std", target_std),
        ):
            buffer = getattr(self, name)
            buffer.copy_(value.to(buffer.device, buffer.dtype).reshape(buffer.shape))

    def model_inputs(self, obs: Tensor, act: Tensor) -> Tensor:
        """The network's raw inputs: `[angle_features(s), a]` (`... x in`)."""
        return torch.cat([angle_features(obs, self.angle_dims), act], dim=-1)

    def normalize_inputs(self, obs: Tensor, act: Tensor) -> Tensor:
        """Standardise the inputs of (s, a): `... x obs`, `... x act` -> `... x in`."""
        return (self.model_inputs(obs, act) - self.input_mean) / self.input_std

    def forward(
        self, x_norm: Tensor, members: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Run every member (or only `members`) on its own slice of the input, in normalised
        space.

        Args:
            x_norm: E x B x in standardised (s, a); K x B x in with `members`.
            members: K member indices to run (None: all E).

        Returns:
            mean E x B x out and log-variance E x B x out (None if deterministic); K x B x out
            with `members`.
        """
        h = x_norm
        for layer in self.hidden:
            h = self.act(layer(h, members))
        out = self.head(h, members)
        if not self.probabilistic:
            return out, None
        mean, logvar = out.split(self.out_dim, dim=-1)
        high, low = self.max_logvar, self.min_logvar
        if members is not None:
            high, low = high[members], low[members]
        logvar = high - F.softplus(high - logvar)
        logvar = low + F.softplus(logvar - low)
        return mean, logvar

    def predict(self, obs: Tensor, act: Tensor, members: Tensor | None = None) -> Prediction:
        """Predict next states (and rewards) in raw units; call under `torch.no_grad()`.

        Args:
            obs: B x obs_dim (every member sees the same batch) or E x B x obs_dim.
            act: B x act_dim or E x B x act_dim, matching `obs`.
            members: K member indices: only those are run (their rows, in this order); None
                runs all E.

        Returns:
            A `Prediction` with E (K) x B x obs_dim next-state tensors and E (K) x B rewards.
        """
        device = self.input_mean.device
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        act = torch.as_tensor(act, dtype=torch.float32, device=device)
        if obs.dim() == 2:
            count = self.num_models if members is None else len(members)
            obs = obs.expand(count, *obs.shape)
            act = act.expand(count, *act.shape)
        mean, logvar = self(self.normalize_inputs(obs, act), members)
        delta = mean * self.target_std + self.target_mean
        var = None if logvar is None else torch.exp(logvar + 2 * torch.log(self.target_std))
        d = self.obs_dim
        return Prediction(
            next_obs_mean=obs + delta[..., :d],
            next_obs_var=None if var is None else var[..., :d],
            reward_mean=delta[..., d] if self.predict_reward else None,
            reward_var=var[..., d] if self.predict_reward and var is not None else None,
        )

    def decay_coefficients(self, weight_decay: float | list[float]) -> list[float]:
        """One weight-decay coefficient per layer (hidden layers, then the output layer).

        Raises:
            OmbrlError: a list whose length is not `num_layers`.
        """
        if isinstance(weight_decay, int | float):
            return [float(weight_decay)] * self.num_layers
        coefs = [float(c) for c in weight_decay]
        if len(coefs) != self.num_layers:
            raise OmbrlError(
                f"weight_decay: {len(coefs)} values given, the model has {self.num_layers} "
                f"layers ({len(self.hidden)} hidden + output)"
            )
        return coefs

    def loss(
        self, x_norm: Tensor, y_norm: Tensor, weight_decay: float | list[float]
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Training loss of every member, plus the MSE and NLL it was made of.

        Deterministic: `mean((mu - y)^2)`. Probabilistic (PETS):
        `mean((mu - y)^2 * exp(-lv) + lv) + 0.01 * (sum max_logvar - sum min_logvar)`.
        Both add `sum_l c_l * |W_l|^2 / 2` over the member's weight matrices (not biases).

        Args:
            x_norm: E x B x in standardised inputs.
            y_norm: E x B x out standardised targets.
            weight_decay: a float for every layer, or one per layer (`num_layers` values).

        Returns:
            loss E (sum it to train: members do not interact), mse E, and nll E
            (`mean((mu - y)^2 * exp(-lv) + lv)`, None if deterministic).
        """
        mean, logvar = self(x_norm)
        sq_err = (mean - y_norm).square()
        mse = sq_err.mean(dim=(1, 2))
        nll = None
        if logvar is None:
            loss = mse
        else:
            nll = (sq_err * torch.exp(-logvar) + logvar).mean(dim=(1, 2))
            bounds = self.max_logvar.sum(dim=(1, 2)) - self.min_logvar.sum(dim=(1, 2))
            loss = nll + LOGVAR_BOUND_COEF * bounds
        layers = [*self.hidden, self.head]
        for coef, layer in zip(self.decay_coefficients(weight_decay), layers, strict=True):
            if coef:
                loss = loss + 0.5 * coef * layer.weight.square().sum(dim=(1, 2))
        return loss, mse, nll


def save_ensemble(model: DynamicsEnsemble, directory: Path, meta: dict) -> None:
    """Write `model.safetensors` (weights and normalisers) and `model.json` into `directory`.

    Args:
        model: the ensemble to store.
        directory: destination folder (created if missing).
        meta: JSON-serialisable facts to keep beside it (config, seed, dataset checksum);
            must not use the keys "architecture" or "elites", which this function writes.
    """
    reserved = {"architecture", "elites"} & set(meta)
    if reserved:
        raise ValueError(f"meta keys {sorted(reserved)} are reserved by save_ensemble")
    full_meta = {"architecture": model.architecture, "elites": list(model.elites), **meta}
    save_model(Path(directory), dict(model.state_dict()), full_meta)


def load_ensemble(
    directory: Path, device: torch.device | str = "cpu"
) -> tuple[DynamicsEnsemble, dict]:
    """Rebuild an ensemble written by `save_ensemble`.

    Args:
        directory: folder holding `model.safetensors` and `model.json`.
        device: where to put the model.

    Returns:
        The model (in eval mode, `elites` restored) and the meta given to `save_ensemble`.

    Raises:
        OmbrlError: missing or corrupted files, or weights that do not match the JSON.
    """
    directory = Path(directory)
    tensors, meta = load_model(directory)
    json_path = directory / "model.json"
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or not (
        set(ARCHITECTURE_KEYS) <= set(arch) <= {*ARCHITECTURE_KEYS, *OPTIONAL_ARCHITECTURE_KEYS}
    ):
        raise OmbrlError(
            f"{json_path}: 'architecture' must have keys {list(ARCHITECTURE_KEYS)} "
            f"(optionally {list(OPTIONAL_ARCHITECTURE_KEYS)})"
        )
    try:
        model = DynamicsEnsemble(**arch)
    except (TypeError, ValueError, OmbrlError) as err:
        raise OmbrlError(f"{json_path}: invalid architecture {arch}: {err}") from err
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise OmbrlError(
            f"{directory / 'model.safetensors'} does not match the architecture in "
            f"{json_path}: {detail}"
        ) from err
    elites = meta.get("elites")
    if (
        not isinstance(elites, list)
        or not elites
        or not all(isinstance(m, int) and 0 <= m < model.num_models for m in elites)
    ):
        raise OmbrlError(f"{json_path}: 'elites' {elites!r} must list member indices")
    model.elites = elites
    user_meta = {k: v for k, v in meta.items() if k not in ("architecture", "elites")}
    return model.to(device).eval(), user_meta
