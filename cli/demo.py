"""`vaecompress demo`: the main job on built-in defaults, with no dataset installed.

Compresses the bundled 1,000 MNIST test images with each bundled default model (binary and
8-bit), decodes them, verifies them pixel for pixel, and prints real rates next to the model's
-ELBO and classical codecs on the same images.
"""
from __future__ import annotations

import numpy as np

from bbans_vae.data import sample_images

CLASSICAL = ("gzip", "bz2", "png")


def run_demo(limit: int | None, chains: int | None, progress_factory) -> list[dict]:
    from bbans_vae.baselines import measure
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
        classical = measure(pixels, binary=(kind == "binary"), codecs=list(CLASSICAL),
                            protocols=("stream", "per_image"))
        rows.append({"model": name, "pixel_kind": kind, "n_images": len(pixels), "bytes": len(data),
                     "verified": bool(np.array_equal(decoded, pixels)), **rep, **drep,
                     "classical": classical})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"vaecompress demo: {rows[0]['n_images']} bundled MNIST test images (28x28), "
             "bits-back ANS with bundled VAEs, decoded and verified", ""]
    head = f"{'codec':<34} {'bytes':>9} {'bpd':>8}  notes"
    for r in rows:
        lines += [f"[{r['pixel_kind']}] {'binary (thresholded at 128)' if r['pixel_kind'] == 'binary' else '8-bit'}",
                  head, "-" * len(head)]
        lines.append(f"{'vaecompress ' + r['model']:<34} {r['bytes']:>9,} {r['actual_bpd']:>8.4f}  "
                     f"-ELBO {r['neg_elbo_bpd']:.4f} bpd, {r['chains']} chains, "
                     f"{r['encode_images_per_second']:,.0f}/{r['decode_images_per_second']:,.0f} img/s enc/dec, "
                     f"{'pixel-exact' if r['verified'] else 'MISMATCH'}")
        for c in sorted(r["classical"], key=lambda c: c["bpd"]):
            label = f"{c['codec']} ({c['protocol'].replace('_', ' ')}, {c['input']})"
            lines.append(f"{label:<34} {c['total_bytes']:>9,} {c['bpd']:>8.4f}")
        lines.append("")
    return "\n".join(lines)
