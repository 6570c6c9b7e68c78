"""Networks of the agents: `n` ReLU MLPs of one shape stacked in `n x in x out` tensors.

SAC's twin critics are two stacked MLPs (one `baddbmm` per layer for both), its actor and the
behaviour-cloning policy one each. Besides the forward pass, `StackedMLP` has the chain rule of
a ReLU MLP written out (`param_grads`, `input_grad`), which SAC uses instead of autograd;
BC trains through autograd, which the forward pass supports as well.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def relu_grad(grad: Tensor, output: Tensor) -> Tensor:
    """`grad` where the ReLU `output` is positive, else 0 (what autograd's ReLU backward does).

    One fused kernel; `torch.where(output > 0, grad, 0)` takes several times longer on CPU.
    """
    return torch.ops.aten.threshold_backward(grad, output, 0.0)


class StackedMLP(nn.Module):
    """`n` independent ReLU MLPs of one shape: layer k is `weight{k}` (n x in x out) and
    `bias{k}` (n x 1 x out).

    Weights and biases are drawn like PyTorch's default Linear init, U(+-1/sqrt(in)), from the
    given generator. A final layer of width 1 (a critic's Q) is a multiply-and-sum instead of a
    `baddbmm`, whose width-1 kernel is about 6x slower on CPU.

    Args:
        n: number of networks.
        in_dim: input width.
        hidden: hidden widths.
        out_dim: output width.
        generator: source of the initial weights.
    """

    def __init__(
        self, n: int, in_dim: int, hidden: list[int], out_dim: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.n = n
        widths = [in_dim, *hidden, out_dim]
        for k, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            bound = 1.0 / math.sqrt(a)
            weight = torch.empty(n, a, b).uniform_(-bound, bound, generator=generator)
            bias = torch.empty(n, 1, b).uniform_(-bound, bound, generator=generator)
            self.register_parameter(f"weight{k}", nn.Parameter(weight))
            self.register_parameter(f"bias{k}", nn.Parameter(bias))

    def layers(self) -> list[tuple[Tensor, Tensor]]:
        """(weight, bias) of every layer, input first (plain list: no Module lookups per use)."""
        params = list(self.parameters(recurse=False))
        return list(zip(params[0::2], params[1::2], strict=True))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Outputs of every network, and every layer's input (what the gradients need).

        Args:
            x: n x B x in (a stride-0 expanded n dimension is fine).

        Returns:
            n x B x out, and the inputs of layers 0..L-1 (x, then the hidden ReLU outputs).
        """
        *hidden, (w, b) = self.layers()
        inputs = [x]
        for hidden_w, hidden_b in hidden:
            x = torch.baddbmm(hidden_b, x, hidden_w).relu_()
            inputs.append(x)
        if w.shape[-1] == 1:
            return torch.linalg.vecdot(x, w.mT).unsqueeze(-1) + b, inputs
        return torch.baddbmm(b, x, w), inputs

    def param_grads(self, inputs: list[Tensor], grad: Tensor) -> list[Tensor]:
        """dL/d parameter of every parameter, in `parameters()` order, given dL/d output.

        Args:
            inputs: what `forward` returned with the output.
            grad: dL/d output, n x B x out.
        """
        grads: list[Tensor] = []
        for k, (w, _) in reversed(list(enumerate(self.layers()))):
            x = inputs[k]
            weight_grad = (x * grad).sum(1).unsqueeze(-1) if w.shape[-1] == 1 else x.mT @ grad
            grads += [grad.sum(1, keepdim=True), weight_grad]  # reversed below: w before b
            if k > 0:
                grad = self._to_layer_input(w, grad, x)
        return grads[::-1]

    def input_grad(self, inputs: list[Tensor], grad: Tensor, input_from: int) -> Tensor:
        """dL/d x[..., input_from:] of an input all `n` networks share, given dL/d output.

        The actor's `-mean_b min_k Q_k(s_b, a_b)` is such a loss: `grad` is -1/B on the rows
        where network k is the minimum and 0 elsewhere. The zero rows cost matmul work, but
        no shape depends on the data, so there is no host synchronisation on a GPU and the
        update compiles into one graph.

        Args:
            inputs: what `forward` returned with the output.
            grad: dL/d output of every network, n x B x out.
            input_from: first input column whose gradient is wanted.

        Returns:
            B x (in - input_from), summed over the networks.
        """
        layers = self.layers()
        for k in reversed(range(1, len(layers))):
            grad = self._to_layer_input(layers[k][0], grad, inputs[k])
        return torch.bmm(grad, layers[0][0][:, input_from:].mT).sum(0)

    @staticmethod
    def _to_layer_input(w: Tensor, grad: Tensor, relu_output: Tensor) -> Tensor:
        """dL/d (input of the layer with weight `w`), which is the ReLU output `relu_output`,
        given dL/d (that layer's output)."""
        back = grad * w.mT if w.shape[-1] == 1 else torch.bmm(grad, w.mT)
        return relu_grad(back, relu_output)
