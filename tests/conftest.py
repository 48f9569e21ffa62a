"""Shared fixtures: the offline data root, small seeded models, bundled models."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_root() -> Path | None:
    env = os.environ.get("VAECOMPRESS_DATA")
    for p in ([Path(env)] if env else []) + [SHARED_DATA]:
        if (p / "MNIST" / "raw").is_dir():
            return p
    return None


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("offline datasets (../shared/data) not available")
    return root


@pytest.fixture(scope="session")
def sample_images() -> np.ndarray:
    """The bundled 1,000 MNIST test images (8-bit); always available."""
    from bbans_vae.data import sample_images as load
    return load()


def random_model(preset: str, seed: int = 0, **overrides):
    import dataclasses
    from bbans_vae.models import build_model, preset_config
    torch.manual_seed(seed)
    cfg = dataclasses.replace(preset_config(preset), **overrides)
    return build_model(cfg).eval()


@pytest.fixture(scope="session")
def bundled():
    from bbans_vae.checkpoint import bundled_models
    models = bundled_models()
    if not models:
        pytest.fail("no bundled models installed")
    return models
