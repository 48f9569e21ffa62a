"""The exact coder path: distributions that are bit-identical on any IEEE-754 machine.

See docs/DESIGN.md (determinism rules) for how this fits the container.

The float32 path gets the coder's parameters from float32 network inference, whose rounding
depends on BLAS kernels, CPU instruction sets, thread counts and batch composition; one ulp
changes the decoded image. This path removes every such dependency:

Integer network (derived from the float32 weights at load time, no stored state)
    * Every Linear layer gets integer-valued weights w_int = round(w * 2^s_j) with a power-of-two
      scale per output row (|w_int| <= 2^18; 2^24 for the first encoder layer, whose inputs are
      the raw pixel integers {0,1} or 0..255 with the 1/255 folded into the weights). Biases are
      integers at the accumulator's scale (|b_int| <= 2^50; a row whose bias needs it gets a
      smaller weight scale).
    * Activations are integers a_int with a power-of-two scale per layer and |a_int| < 2^AB,
      where AB = 51 - ceil(log2(max_row sum_i |w_int[row, i]|)) of the layer that reads them.
      So every product is an exact integer and every partial sum of `a_int @ w_int.T + b_int`
      is below 2^52 < 2^53 in magnitude: a float64 GEMM gives the exact integer result in ANY
      summation order, blocking, FMA use or thread split, on any BLAS or device. Batch
      composition cannot change a row's result.
    * ReLU is exact; requantisation multiplies by a power of two (exact) and rounds with
      floor(x + 0.5) (exact), then clips to the activation range (saturation, never overflow).
      The last layer's accumulator times a power of two is its exact float64 output.
    * Activation scales come from calibration with this exact integer path itself (so the
      calibration is reproducible too): 256 latent vectors drawn from the prior by an integer
      hash (bucket centres from the bundled quantile table) run through the decoder; the
      decoder's own mean images (thresholded / rounded, all exact) then calibrate the encoder.
      Each layer's scale leaves 2^6-2^7 headroom above the calibration maximum. Everything is a
      pure function of the float32 weights, which the container pins by their sha256.

Context models (arch "ctx")
    The pixel-context conv net runs as integer GEMMs over im2col patches (`QContext`): its
    input (decoder output, visible pixels, mask) is rounded to integers at one power-of-two
    scale; its weights get twice the bits (`QSplitLayer`: w = w_hi * 2^18 + w_lo, two exact
    GEMMs whose sums, like the bias and the final correction, are combined element by element
    with single IEEE operations, which are correctly rounded and so identical everywhere). Per
    phase only the pixels of that phase are computed (the coder reads no others).

Non-linearities without transcendental functions
    softplus (posterior std), sigmoid (Bernoulli p, logistic CDFs), exp (Gaussian std, logistic
    scales and mixture weights) and the normal tail Phi(-a) (posterior bucket masses) are linear
    interpolations in tables using only + - * / floor copysign and comparisons (correctly
    rounded in IEEE-754, hence identical everywhere). The tables and the latent bucket
    edges/centres (Phi^-1(j / 2^15)) are bundled as .npy files under `bundled/exact/`,
    generated with mpmath by `python tools/write_exact_tables.py`, and verified by sha256
    at load. Masses keep the tail trick (differences of the smaller tails). No reduction (sum)
    of floats is done in numpy: its pairwise/SIMD summation order is not guaranteed.

What is still assumed
    The coder turns float64 parameters into integer CDFs inside constriction (Rust): the
    posterior and logistic tables via `Categorical(perfect=False)` (IEEE arithmetic only) and
    the 8-bit Gaussian pixels via `QuantizedGaussian(0, 255)`, whose CDF is evaluated in
    constriction's Rust code with Rust's float runtime. Identical inputs then give identical
    coders for the same constriction version (pinned and recorded in the header) on the same
    architecture; a different libm `exp` behind that Rust erf is the one residual dependency
    of the 8-bit Gaussian family. Binary models and posteriors have none.

The path is recorded in the container as coder_path "exact" (version 1 of this arithmetic:
any change to the rules above must use a new coder path name).
"""
from __future__ import annotations

from .backend import EXACT_ARCHS, ExactBackend, exact_networks
from .qnet import ExactNetworks
from .tables import MAX_LATENT_BITS, TABLE_SPECS, load_table, table_value

__all__ = ["EXACT_ARCHS", "ExactBackend", "ExactNetworks", "MAX_LATENT_BITS", "TABLE_SPECS", "exact_networks",
           "load_table", "table_value"]
