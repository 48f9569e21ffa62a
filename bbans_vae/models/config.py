"""ModelConfig: everything that defines an architecture. JSON-serialisable via `to_dict`."""
from __future__ import annotations

from dataclasses import dataclass, asdict

import numpy as np

from ..errors import ModelError

ARCH_NAMES = ("mlp", "ctx", "conv")     # presets.ARCHITECTURES maps each to its class
MAX_CONV_VALUES = 1 << 22             # conv models: H*W*channels per image (other models: 2^20)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines an architecture. JSON-serialisable via `to_dict`."""

    arch: str = "mlp"
    image_shape: tuple = (28, 28)
    pixel_kind: str = "binary"          # "binary" (values {0,1}) or "8bit" (0..255)
    hidden: tuple = (500, 500, 500)
    latent_dim: int = 10                # conv models: latent channels per 4x4 block (`n_latents` in all)
    likelihood: str = "bernoulli"       # "bernoulli" | "gaussian" | "logistic"
    mixtures: int = 1                   # logistic mixture components (likelihood == "logistic")
    context_channels: int = 0           # width of the pixel-context conv net (arch "ctx", or colour)
    channels: int = 1                   # 1 (gray) or 3 (colour: channels coded in order)
    context_levels: int = 1             # arch "ctx": checkerboard levels; 3*levels+1 phases (context.py)
    context_layers: int = 2             # hidden conv layers of the context net (arch "ctx": receptive field 2L+1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        d["hidden"] = list(self.hidden)
        if self.channels == 1:
            del d["channels"]               # gray configs stay as they were before colour existed
        if self.context_levels == 1:
            del d["context_levels"]         # so do 4-phase context models
        if self.context_layers == 2:
            del d["context_layers"]         # and 2-layer context nets
        return d

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        try:
            cfg = ModelConfig(
                arch=str(d["arch"]),
                image_shape=tuple(int(v) for v in d["image_shape"]),
                pixel_kind=str(d["pixel_kind"]),
                hidden=tuple(int(v) for v in d["hidden"]),
                latent_dim=int(d["latent_dim"]),
                likelihood=str(d["likelihood"]),
                mixtures=int(d.get("mixtures", 1)),
                context_channels=int(d.get("context_channels", 0)),
                channels=int(d.get("channels", 1)),
                context_levels=int(d.get("context_levels", 1)),
                context_layers=int(d.get("context_layers", 2)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"model config is incomplete or malformed ({e!r})") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.arch not in ARCH_NAMES:
            raise ModelError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCH_NAMES)}")
        if self.pixel_kind not in ("binary", "8bit"):
            raise ModelError(f"pixel_kind must be 'binary' or '8bit', not {self.pixel_kind!r}")
        allowed = ("bernoulli",) if self.pixel_kind == "binary" else ("gaussian", "logistic")
        if self.likelihood not in allowed:
            raise ModelError(f"{self.pixel_kind} pixels need one of the likelihoods {allowed}, not {self.likelihood!r}")
        if not (1 <= self.latent_dim <= 4096) or not self.hidden or min(self.hidden) < 1:
            raise ModelError("latent_dim must be in 1..4096 and hidden sizes positive")
        if self.channels not in (1, 3):
            raise ModelError(f"channels must be 1 (gray) or 3 (colour), not {self.channels}")
        cap = MAX_CONV_VALUES if self.arch == "conv" else 1 << 20
        if len(self.image_shape) != 2 or min(self.image_shape) < 1 or self.n_pixels > cap:
            raise ModelError(f"image_shape must be (H, W) with H*W*channels <= 2^{cap.bit_length() - 1}, got "
                             f"{tuple(self.image_shape)} x {self.channels}")
        if not (1 <= self.mixtures <= 16):
            raise ModelError("mixtures must be in 1..16")
        if self.has_context != (self.context_channels > 0) or self.context_channels > 512:
            raise ModelError("context_channels must be in 1..512 for arch 'ctx' and colour models, 0 otherwise")
        if not (1 <= self.context_levels <= 3) or (self.context_levels > 1 and self.arch != "ctx"):
            raise ModelError("context_levels must be in 1..3, and above 1 only for arch 'ctx'")
        if not (1 <= self.context_layers <= 8) or (self.context_layers != 2 and not self.has_context):
            raise ModelError("context_layers must be in 1..8, and differ from 2 only for context models")
        if self.has_context and self.likelihood == "logistic":
            raise ModelError("context and colour models support the bernoulli and gaussian likelihoods")

    @property
    def n_pixels(self) -> int:
        """Values coded per image, the bpd denominator: H * W * channels."""
        return int(np.prod(self.image_shape)) * self.channels

    @property
    def n_latents(self) -> int:
        """Latent dimensions per image: latent_dim, or for conv models latent_dim per 4x4 block."""
        if self.arch != "conv":
            return self.latent_dim
        H, W = self.image_shape
        return self.latent_dim * -(-H // 4) * -(-W // 4)

    @property
    def any_size(self) -> bool:
        """Whether one model's weights code images of any H x W (conv models, `ConvVAE.at`)."""
        return self.arch == "conv"

    @property
    def array_shape(self) -> tuple:
        """Shape of one image array: (H, W) gray, (H, W, C) colour."""
        return tuple(self.image_shape) if self.channels == 1 else (*self.image_shape, self.channels)

    @property
    def has_context(self) -> bool:
        """Whether the likelihood reads already-coded values: checkerboard phases (arch "ctx")
        and/or the channel order (colour). Such models are ContextVAEs."""
        return self.arch == "ctx" or self.channels > 1

    @property
    def levels(self) -> int:
        return 2 if self.pixel_kind == "binary" else 256
