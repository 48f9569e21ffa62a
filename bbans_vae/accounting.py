"""One accounting of a .vae file's size, from its bytes (docs/DESIGN.md, "Accounting").

Every command and the Python API report sizes through `file_sizes`, so `encode`, `info`,
`bench`, `gaps` and `Codec.compress(report=True)` cannot disagree on a file:

    actual_bits      8 x the file's size: everything counted
    payload_bits     the chains' ANS content (each chain's valid bits, read back from its words)
    container_bits   actual_bits - payload_bits: header, word padding, chain flush
    n_images, n_dims, chains, plain_images     from the header

Estimates the file does not hold are added when the caller knows them (the encoder does):

    initial_bits     bits not got back on images coded plain (chain starts), inside payload_bits
    ideal_bits       sum over images of -log2 p(x|z) - log2 p(z) + log2 q(z|x) at the z used
    neg_elbo_bits    the model's -ELBO (continuous latents, 1-sample Monte Carlo reconstruction)

Each `*_bits` also appears per dimension as `*_bpd`.
"""
from __future__ import annotations

import constriction

from .container import Header, unpack
from .errors import ContainerError

SIZE_KEYS = ("actual", "payload", "container", "initial", "ideal", "neg_elbo")


def chain_valid_bits(words) -> int:
    """The valid bits of one chain's stored words: what its ANS stack holds."""
    try:
        return int(constriction.stream.stack.AnsCoder(words).num_valid_bits())
    except ValueError as e:
        raise ContainerError(f"corrupt chain: {e}") from None


def file_sizes(data: bytes, *, initial_bits: float | None = None, ideal_bits: float | None = None,
               neg_elbo_bits: float | None = None, channels: int = 1) -> dict:
    """Sizes of the container `data`, in bits and bits per dimension (see the module docstring)."""
    header, chains = unpack(data)
    return sizes_of(header, chains, 8 * len(data), initial_bits=initial_bits, ideal_bits=ideal_bits,
                    neg_elbo_bits=neg_elbo_bits, channels=channels)


def sizes_of(header: Header, chains: list, actual_bits: int, *, initial_bits: float | None = None,
             ideal_bits: float | None = None, neg_elbo_bits: float | None = None, channels: int = 1) -> dict:
    """`file_sizes` for an already parsed container (header, chain words) of `actual_bits`.

    n_dims = images x H x W x `channels`: the version-1 header holds H and W only; the channel
    count is the model's (the encoder passes it); version 2 of the header stores it, and that wins."""
    dims = header.n_images * header.height * header.width * channels
    if header.version >= 2:                             # stores C, and the shape runs
        dims = header.output_bytes
    payload_bits = sum(chain_valid_bits(w) for w in chains)
    sizes = {"n_images": header.n_images, "n_dims": dims, "chains": header.n_chains,
             "plain_images": len(header.plain_images), "actual_bits": actual_bits,
             "payload_bits": payload_bits, "container_bits": actual_bits - payload_bits}
    for key, value in (("initial", initial_bits), ("ideal", ideal_bits), ("neg_elbo", neg_elbo_bits)):
        if value is not None:
            sizes[f"{key}_bits"] = float(value)
    for key in SIZE_KEYS:
        if f"{key}_bits" in sizes:
            sizes[f"{key}_bpd"] = sizes[f"{key}_bits"] / dims if dims else 0.0
    return sizes
