"""R independent MLP encoders (and decoders) stepped in lockstep as batched matmuls, for accelerators.

The gaps study trains one 784-500-500-500-10 VAE for 1,000 epochs (600,000 Adam steps of 100
images) and refits its encoder at a dozen checkpoints for up to 1,000 epochs each; Reverse
Half-Asleep fine-tunes 9 encoders (3 objectives x 3 seeds) per model. Each step is a few small
matmuls: on a GPU the time goes to launching kernels, not to arithmetic. Two remedies, both here:

* `Stacked`: R copies of an `nn.Sequential` MLP (Linear/ReLU) as weights (R, in, out) and
  `torch.baddbmm`, so one kernel steps all R models (refits of every checkpoint at once, the
  seeds of a fine-tuning at once). `export(r)` gives copy r back as an `nn.Sequential` state dict.
* `LockstepTrainer`: one Adam step of the stacked models captured as a CUDA graph and replayed
  (PyTorch's "whole network capture"), which removes the Python and launch overhead; on a CPU,
  or if capture fails, the same step runs eagerly (`graph_error` says why).

The objective is the project's -ELBO in bits (`objectives.neg_elbo_bits`, 1 sample), written for
(R, B, ...) tensors: `neg_elbo_bits_stacked`. Its value equals `neg_elbo_bits` of each model up
to float rounding (tested in tests/test_batched.py). Shuffling follows `train.py` and
`gaps.refit_encoder` (epoch e of seed s: `torch.randperm(n, generator=manual_seed(s * 1_000_003
+ e))`); the reparameterisation noise comes from the device's default generator, so runs on a GPU
and on a CPU use different noise (and are reported as such).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .models import VAE
from .models.vae import SIGMA_FLOOR
from .objectives import gaussian_kl_bits


class Stacked(nn.Module):
    """R copies of an MLP `nn.Sequential` (Linear layers with ReLU between): (R, B, in) -> (R, B, out)."""

    def __init__(self, mlps: list[nn.Sequential]):
        super().__init__()
        layers = [[m for m in seq if isinstance(m, nn.Linear)] for seq in mlps]
        depth = len(layers[0])
        if any(len(ls) != depth for ls in layers):
            raise ValueError("Stacked needs MLPs of one architecture")
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([ls[i].weight.detach().t() for ls in layers]).contiguous())
            for i in range(depth))                                                    # (R, in, out)
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([ls[i].bias.detach().view(1, -1) for ls in layers]).contiguous())
            for i in range(depth))                                                    # (R, 1, out)
        self._names = [name for name, m in mlps[0].named_children() if isinstance(m, nn.Linear)]

    @property
    def copies(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)                                                # (R, B, out)
            if i < last:
                x = F.relu(x)
        return x

    def snapshot(self, r: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copy r's (weight (in, out), bias (1, out)) per layer, cloned on the device (no host sync)."""
        return [(w[r].detach().clone(), b[r].detach().clone()) for w, b in zip(self.weights, self.biases)]

    def state_dict_of(self, snap: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """A snapshot as the state dict of the original `nn.Sequential` (CPU, contiguous)."""
        out = {}
        for name, (w, b) in zip(self._names, snap):
            out[f"{name}.weight"] = w.t().contiguous().cpu()
            out[f"{name}.bias"] = b[0].contiguous().cpu()
        return out

    def export(self, r: int) -> dict[str, torch.Tensor]:
        """Copy r as the state dict of the original `nn.Sequential` (CPU, contiguous)."""
        return self.state_dict_of(self.snapshot(r))


def stacked_posterior(encoder: Stacked, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z|x) of R encoders on (R, B, P) encoder inputs: mu, sigma (R, B, D) (as `VAE.posterior`)."""
    mu, raw = encoder(x_in).chunk(2, dim=-1)
    return mu, F.softplus(raw) + SIGMA_FLOOR


def encoder_input(model: VAE, xf: torch.Tensor) -> torch.Tensor:
    return xf if model.cfg.pixel_kind == "binary" else xf / 255.0


def neg_elbo_bits_stacked(model: VAE, encoder: Stacked, pixel_out: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                          xf: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """-ELBO in bits of (R, B, P) float pixels under R encoders, 1 sample each (eps (R, B, D)):
    (R, B). `pixel_out(z (R, B, D), xf (R, B, P))` gives the likelihood parameters (R, B, P*k);
    `model.likelihood` scores them."""
    R, B, P = xf.shape
    mu, sigma = stacked_posterior(encoder, encoder_input(model, xf))
    out = pixel_out(mu + sigma * eps, xf)
    rec = model.likelihood.nll_bits(xf.reshape(R * B, P), out.reshape(R * B, -1)).view(R, B)
    return rec + gaussian_kl_bits(mu, sigma)


def shared_pixel_out(model: VAE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`pixel_out` for R encoders that share `model`'s (frozen) decoder and context net."""
    def pixel_out(z: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
        R, B, D = z.shape
        return model.pixel_out(z.reshape(R * B, D), xf.reshape(R * B, -1)).view(R, B, -1)
    return pixel_out


def stacked_pixel_out(decoder: Stacked) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`pixel_out` for R MLP models with decoders of their own (no context net)."""
    return lambda z, xf: decoder(z)


class LockstepTrainer:
    """Adam steps of `params` on `loss(step_inputs) -> (R,) mean bits` summed over the R models,
    with the step's inputs written into fixed buffers first; captured as a CUDA graph on a GPU.

    `make_inputs()` returns the dict of input buffers (their shapes are fixed); `load(inputs)`
    copies a step's values into them; `step()` runs one step and adds each model's loss into
    `loss_sum` (R,). Adam's state starts fresh: the capture's warm-up steps are undone (params
    restored, moments and step counts zeroed), so the trajectory is that of plain Adam.
    Summing the R losses keeps the models independent: each parameter's gradient is its own
    model's, and Adam is per parameter element.
    """

    def __init__(self, params: list[torch.Tensor], loss: Callable[[dict], torch.Tensor], inputs: dict,
                 lr: float, use_graph: bool | None = None):
        self.params = list(params)
        self.loss = loss
        self.inputs = inputs
        device = self.params[0].device
        self.loss_sum = torch.zeros(loss(inputs).shape[0], device=device)
        capturable = device.type == "cuda"
        self.opt = torch.optim.Adam(self.params, lr=lr, capturable=capturable, fused=capturable or None)
        self.graph = None
        self.graph_error: str | None = None
        if use_graph is None:
            use_graph = capturable
        if use_graph:
            try:
                self._capture()
            except Exception as e:  # noqa: BLE001 - reported, the eager step is the same math
                self.graph, self.graph_error = None, f"{type(e).__name__}: {e}"
                self._reset()

    def _eager(self) -> None:
        for p in self.params:
            p.grad = None
        loss = self.loss(self.inputs)                                                 # (R,)
        loss.sum().backward()
        self.opt.step()
        self.loss_sum += loss.detach()

    def _reset(self) -> None:
        with torch.no_grad():
            for p, p0 in zip(self.params, self._start):
                p.copy_(p0)
            self.loss_sum.zero_()
            for st in self.opt.state.values():
                for k, v in st.items():
                    if torch.is_tensor(v):
                        v.zero_()

    def _capture(self) -> None:
        self._start = [p.detach().clone() for p in self.params]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                self._eager()
        torch.cuda.current_stream().wait_stream(s)
        for p in self.params:
            p.grad = None
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            loss = self.loss(self.inputs)
            loss.sum().backward()
            self.opt.step()
            self.loss_sum += loss.detach()
        self.graph = g
        self._reset()

    def load(self, values: dict) -> None:
        for k, v in values.items():
            self.inputs[k].copy_(v, non_blocking=True)

    def step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._eager()

