"""vaecompress library: lossless image compression with a VAE and bits-back ANS, and the
generalization gaps of a training run measured in real bits.

The public API (documented in the README, "Python API"):

    load(ref) -> Codec          a bundled model name, checkpoint or run directory
    Codec.compress(images, report=False) -> bytes  (or (bytes, report) with report=True)
    Codec.decompress(data) -> images
    decompress(data, search_path=None) -> images   the model the file names, found by its hash
    file_sizes(data) -> dict    the one accounting of a file's bits
    sample_images(limit=None)   the bundled MNIST test images
    VaeCompressError            the base of every error the library raises for bad input

Math lives here (no printing); the command line lives in the `vaecompress_cli` package.
Modules and their jobs: docs/DESIGN.md.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Codec", "VaeCompressError", "decompress", "file_sizes", "load", "sample_images"]

_HOME = {"Codec": "api", "load": "api", "decompress": "api", "file_sizes": "accounting",
         "sample_images": "data", "VaeCompressError": "errors"}


def __getattr__(name: str):
    # imported on first use: `import bbans_vae.data` stays light (no torch)
    if name in _HOME:
        import importlib
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["__version__"])
