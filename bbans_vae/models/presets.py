"""Named architecture presets and building a model from a config.

Presets (one table, `PRESETS`; parameter counts from `count_parameters`, 28x28 images):

| preset          | encoder / decoder     | z  | likelihood                | params   |
|-----------------|-----------------------|----|---------------------------|----------|
| mlp-paper       | 3 x 500 ReLU          | 10 | Bernoulli                 | 1,802,804|
| mlp-bbans-bin   | 1 x 100 ReLU          | 40 | Bernoulli                 |   169,864|
| mlp-bin         | 2 x 500 ReLU          | 32 | Bernoulli                 | 1,334,848|
| mlp-8bit        | 2 x 500 ReLU          | 32 | discretized Gaussian      | 1,727,632|
| mlp-8bit-logistic| 2 x 500 ReLU         | 32 | discretized logistic, K=1 | 2,120,416|
| mlp-8bit-mix    | 2 x 500 ReLU          | 32 | discretized logistic, K=3 | 4,477,120|
| mlp-bbans-8bit  | 1 x 200 ReLU          | 50 | discretized Gaussian      |   502,468|
| ctx-bin         | mlp-bin + context net | 32 | Bernoulli, 4 phases       | 1,345,025|
| ctx-8bit        | mlp-8bit + context net| 32 | discretized Gaussian, 4 ph| 1,738,130|
| ctx7-bin        | ctx-bin, 2-level order| 32 | Bernoulli, 7 phases       | 1,345,025|
| ctx7-8bit       | ctx-8bit, 2-level order| 32| discretized Gaussian, 7 ph| 1,738,130|
| ctxw-bin        | ctx-bin, 4 context layers (9x9) | 32 | Bernoulli, 4 phases | 1,363,521|
| ctxw-8bit       | ctx-8bit, 4 context layers (9x9)| 32 | discretized Gaussian, 4 ph | 1,756,626|
| conv-bin        | 2 x 64 conv3x3 on 4x4 blocks | 4 per block | Bernoulli | 99,352|
| conv-8bit       | 2 x 64 conv3x3 on 4x4 blocks | 4 per block | discretized Gaussian | 108,584|

`ctx-*` (ContextVAE): the likelihood also reads already-coded neighbours in a 2x2 checkerboard
order (He et al., "Checkerboard Context Model for Efficient Learned Image Compression", CVPR
2021; PixelVAE, Gulrajani et al. 2017, for the idea of a local autoregressive VAE decoder).
`conv-*` (ConvVAE, models/conv.py): fully convolutional, spatial latents per 4x4 block; one
model's weights code images of any H x W (its parameter count does not depend on the size).
"""
from __future__ import annotations

from dataclasses import replace

from ..errors import ModelError
from .config import ModelConfig
from .context import ContextVAE
from .conv import ConvContextVAE, ConvVAE
from .vae import VAE

PRESETS: dict[str, tuple[ModelConfig, str]] = {
    "mlp-paper": (ModelConfig(hidden=(500, 500, 500), latent_dim=10),
                  "gaps paper setting: 3x500 ReLU MLP, z=10, Bernoulli"),
    "mlp-bbans-bin": (ModelConfig(hidden=(100,), latent_dim=40),
                      "BB-ANS paper binary setting: 784-100-40, Bernoulli"),
    "mlp-bin": (ModelConfig(hidden=(500, 500), latent_dim=32),
                "default binary model: 2x500 ReLU, z=32, Bernoulli"),
    "mlp-8bit": (ModelConfig(pixel_kind="8bit", likelihood="gaussian", hidden=(500, 500), latent_dim=32),
                 "default 8-bit model: 2x500 ReLU, z=32, discretized Gaussian"),
    "mlp-8bit-logistic": (ModelConfig(pixel_kind="8bit", likelihood="logistic", hidden=(500, 500), latent_dim=32),
                          "2x500 ReLU, z=32, discretized logistic (table-coded: slower)"),
    "mlp-8bit-mix": (ModelConfig(pixel_kind="8bit", likelihood="logistic", hidden=(500, 500), latent_dim=32,
                                 mixtures=3),
                     "2x500 ReLU, z=32, 3-component discretized logistic mixture"),
    "mlp-bbans-8bit": (ModelConfig(pixel_kind="8bit", likelihood="gaussian", hidden=(200,), latent_dim=50),
                       "BB-ANS paper 8-bit size: 784-200-50 (discretized Gaussian instead of beta-binomial)"),
    "ctx-bin": (ModelConfig(arch="ctx", hidden=(500, 500), latent_dim=32, context_channels=32),
                "mlp-bin + checkerboard pixel context (2 conv3x3 layers, 32 channels), Bernoulli"),
    "ctx-8bit": (ModelConfig(arch="ctx", pixel_kind="8bit", likelihood="gaussian", hidden=(500, 500),
                             latent_dim=32, context_channels=32),
                 "mlp-8bit + checkerboard pixel context (2 conv3x3 layers, 32 channels), discretized Gaussian"),
    "ctx7-bin": (ModelConfig(arch="ctx", hidden=(500, 500), latent_dim=32, context_channels=32, context_levels=2),
                 "ctx-bin with a 2-level checkerboard: 7 phases, 1/16 of pixels without context"),
    "ctx7-8bit": (ModelConfig(arch="ctx", pixel_kind="8bit", likelihood="gaussian", hidden=(500, 500),
                              latent_dim=32, context_channels=32, context_levels=2),
                  "ctx-8bit with a 2-level checkerboard: 7 phases, 1/16 of pixels without context"),
    "ctxw-bin": (ModelConfig(arch="ctx", hidden=(500, 500), latent_dim=32, context_channels=32, context_layers=4),
                 "ctx-bin with 4 conv3x3 context layers: a 9x9 receptive field instead of 5x5"),
    "ctxw-8bit": (ModelConfig(arch="ctx", pixel_kind="8bit", likelihood="gaussian", hidden=(500, 500),
                              latent_dim=32, context_channels=32, context_layers=4),
                  "ctx-8bit with 4 conv3x3 context layers: a 9x9 receptive field instead of 5x5"),
    "conv-bin": (ModelConfig(arch="conv", hidden=(64, 64), latent_dim=4),
                 "any size: conv encoder/decoder (2x64 conv3x3 on 4x4 blocks), 4 latents per block, Bernoulli"),
    "conv-8bit": (ModelConfig(arch="conv", pixel_kind="8bit", likelihood="gaussian", hidden=(64, 64), latent_dim=4),
                  "any size: conv encoder/decoder (2x64 conv3x3 on 4x4 blocks), 4 latents per block, "
                  "discretized Gaussian"),
}


COLOUR_CONTEXT_CHANNELS = 32  # width of a colour mlp preset's per-pixel (1x1) channel-context net


def preset_config(name: str, image_shape: tuple | None = None) -> ModelConfig:
    """Preset `name` for images of `image_shape`: (H, W) gray or (H, W, C) colour (default: the
    table's 28x28 gray). The mlp layers take their sizes from it. Colour models code the channels
    of a pixel in order, each given the previous ones: ctx presets through their context net,
    mlp presets through a per-pixel channel-context net of COLOUR_CONTEXT_CHANNELS."""
    if name not in PRESETS:
        raise ModelError(f"unknown architecture preset {name!r}; choose one of: {', '.join(PRESETS)}")
    cfg = PRESETS[name][0]
    if image_shape is None:
        return cfg
    shape = tuple(int(s) for s in image_shape)
    channels = shape[2] if len(shape) == 3 else 1
    cfg = replace(cfg, image_shape=shape[:2], channels=channels)
    if channels > 1 and not cfg.context_channels:
        cfg = replace(cfg, context_channels=COLOUR_CONTEXT_CHANNELS)
    cfg.validate()
    return cfg


ARCHITECTURES = {"mlp": VAE, "ctx": ContextVAE, "conv": ConvVAE}


def build_model(cfg: ModelConfig) -> VAE:
    cfg.validate()
    if cfg.arch == "conv":
        return ConvContextVAE(cfg) if cfg.has_context else ConvVAE(cfg)
    return ContextVAE(cfg) if cfg.has_context else ARCHITECTURES[cfg.arch](cfg)
