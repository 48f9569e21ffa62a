"""VAE architectures and pixel likelihoods.

Every quantity is in bits (log base 2). The model meets the coder through two small hooks:
`VAE.posterior(x) -> (mu, sigma)` and `VAE.pixel_coder_params(z)`, which give the parameters
the ANS codecs in `bbans_vae.ans.codecs` turn into integer distributions. The -ELBO and IWAE
bounds are in `bbans_vae.objectives`.

    config.py       ModelConfig: everything that defines an architecture (JSON round trip)
    presets.py      the named presets and build_model
    likelihoods.py  Bernoulli, discretized Gaussian, discretized logistic (mixture) pixels
    vae.py          the MLP VAE
    context.py      the context VAE: checkerboard phases and/or the channel order of colour
    conv.py         the fully convolutional VAE: spatial latents, one model for any image size

References
- Kingma & Welling, Auto-Encoding Variational Bayes (2014): the VAE and the reparameterised ELBO.
- Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (2016): the IWAE bound.
- Salimans et al., PixelCNN++ (2017): the discretized logistic (mixture) likelihood.
- The discretized Gaussian is exactly constriction's `QuantizedGaussian(0, 255)`: bins of width 1,
  the end bins take the tails (measured), so the coder evaluates it natively, with no tables.
- The gaps paper's setting (`mlp-paper`): 784-500-500-500-10 ReLU MLP, softplus std, N(0, I).
"""
from __future__ import annotations

from .config import ModelConfig
from .context import ContextVAE, checkerboard_phases, coding_phases
from .conv import ConvContextVAE, ConvVAE, sized_model
from .likelihoods import LN2
from .presets import ARCHITECTURES, PRESETS, build_model, preset_config
from .vae import SIGMA_FLOOR, VAE, count_parameters

__all__ = ["ARCHITECTURES", "ContextVAE", "ConvContextVAE", "ConvVAE", "LN2", "ModelConfig", "PRESETS", "SIGMA_FLOOR", "VAE", "build_model",
           "checkerboard_phases", "coding_phases", "count_parameters", "preset_config", "sized_model"]
