"""`vaecompress demo`: the main job on built-in defaults, with no dataset installed.

Compresses the bundled 1,000 MNIST test images with each bundled default model (binary and
8-bit), decodes them, verifies them pixel for pixel, and reports real rates next to the model's
-ELBO and the rivals on the same images: the strongest lossless image codecs (JPEG-XL at its
highest effort, WebP lossless; per image and as one mosaic) and gzip, bz2 and PNG.
"""
from __future__ import annotations

import numpy as np

from bbans_vae.data import sample_images

RIVALS = {"8bit": ("gzip", "bz2", "png", "webp", "jpegxl"),
          "binary": ("gzip", "bz2", "png", "png-1bit", "webp", "jpegxl", "jpegxl-1bit")}


def run_demo(limit: int | None, chains: int | None, progress_factory) -> list[dict]:
    from bbans_vae.baselines import default_jxl_effort, measure
    from bbans_vae.checkpoint import bundled_models, load_model
    from bbans_vae.pipeline import DEFAULT_MODELS, compress, decompress
    from bbans_vae.errors import ModelError

    images8 = sample_images(limit)
    available = bundled_models()
    rows = []
    for kind, name in DEFAULT_MODELS.items():
        if name not in available:
            raise ModelError(f"bundled model {name!r} is missing from this install; reinstall vaecompress")
        model, config, _ = load_model(name)
        pixels = (images8 >= 128).astype(np.uint8) if kind == "binary" else images8
        with progress_factory(len(pixels), f"encode {name}") as bar:
            data, rep = compress(model, name, config["weights_sha256"], pixels, names_stem="mnist_test",
                                 n_chains=chains, progress=bar.update, with_neg_elbo=True)
        with progress_factory(len(pixels), f"decode {name}") as bar:
            decoded, _, drep = decompress(data, model, config["weights_sha256"], progress=bar.update)
        effort = default_jxl_effort()
        rivals = measure(pixels, binary=(kind == "binary"), codecs=list(RIVALS[kind]),
                         protocols=("stream", "per_image", "mosaic"), effort=effort)
        rows.append({"model": name, "pixel_kind": kind, "n_images": len(pixels), "bytes": len(data),
                     "verified": bool(np.array_equal(decoded, pixels)), **rep, **drep,
                     "jpegxl_effort": effort, "rivals": rivals})
    return rows
