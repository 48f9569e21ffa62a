"""Checkpoints: safetensors weights + a JSON config, never pickle.

A checkpoint is a directory holding
    model.safetensors   the weights (loading it runs no code)
    config.json         {"format", "model": ModelConfig, "weights_sha256", "dataset", "epoch",
                         "command", "seed", "git_revision", "train_subset", "metrics", ...}
The sha256 of the weights file is checked on every load and recorded in every .vae file.

A *model reference* (what `--model` and `eval MODEL` accept) is a bundled model name (listed by
`vaecompress models`), a checkpoint directory, or a training run directory (its newest checkpoint).

Decoding without a model reference finds the model a file names (`locate_model`, implemented
torch-free in `model_search`): the bundled model of that name (version-1 files), then any
bundled model, then the checkpoints under the directories of `$VAECOMPRESS_MODELS` (separated
by the OS path separator), always by the weights' sha256 the file records. A path written in a
file is never opened, and the error is the same whether or not such a directory exists.

Model directories are treated as untrusted: config.json is parsed strictly (no NaN/Infinity,
integers of at most 18 digits, nesting at most 32 deep, no floats where integers belong), the
architecture's parameter count is computed on torch's meta device and capped
(`limits.MAX_PARAMETERS`) before anything is allocated, the weights file's size and every
tensor's name, dtype and exact shape are checked from its header before it is read, and the
loaded weights must be finite.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import limits
from .errors import ModelError
from .models import VAE, ModelConfig, build_model

from .model_search import (BUNDLED_DIR, CONFIG, FORMAT, MAX_CONFIG_BYTES, MODELS_ENV, WEIGHTS,  # noqa: F401
                           bundled_models, find_model, locate_model, models_search_path, newest_checkpoint,
                           parse_config_text, read_config)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: dict) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(ckpt_dir: Path, model: VAE, meta: dict) -> dict:
    """Write weights then config (config last: a checkpoint without one is incomplete)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(model.state_dict(), ckpt_dir / WEIGHTS)
    config = {**meta, "format": FORMAT, "model": model.cfg.to_dict(),
              "weights_sha256": sha256_file(ckpt_dir / WEIGHTS)}
    write_json_atomic(ckpt_dir / CONFIG, config)
    return config


# keys of the "model" section whose values are integers, and their ranges
_INT_FIELDS = {"latent_dim": (1, 4096), "mixtures": (1, 16), "context_channels": (0, 4096)}
_MAX_HIDDEN_LAYERS = 64
_MAX_WIDTH = 1 << 24


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_model_dict(d) -> None:
    """Types and integer ranges of a config's "model" section, before ModelConfig reads it:
    integers must be JSON integers (500.7, 1e9, "500" and true are refused, not truncated)."""
    if not isinstance(d, dict):
        raise ModelError("the config's model section is not an object")
    for key in ("arch", "pixel_kind", "likelihood"):
        if not isinstance(d.get(key), str) or len(d[key]) > 64:
            raise ModelError(f"model config: {key} must be a string")
    shape = d.get("image_shape")
    if not isinstance(shape, list) or not 2 <= len(shape) <= 3 or not all(_is_int(v) and 1 <= v <= 1 << 15 for v in shape):
        raise ModelError("model config: image_shape must be a list of 2 or 3 integers in 1..32768")
    hidden = d.get("hidden")
    if (not isinstance(hidden, list) or not 1 <= len(hidden) <= _MAX_HIDDEN_LAYERS
            or not all(_is_int(v) and 1 <= v <= _MAX_WIDTH for v in hidden)):
        raise ModelError(f"model config: hidden must be a list of 1..{_MAX_HIDDEN_LAYERS} integers in 1..{_MAX_WIDTH}")
    for key, (lo, hi) in _INT_FIELDS.items():
        if key in d and not (_is_int(d[key]) and lo <= d[key] <= hi):
            raise ModelError(f"model config: {key} must be an integer in {lo}..{hi}")
    if "latent_dim" not in d:
        raise ModelError("model config: latent_dim is missing")
    for key, v in d.items():   # fields added later: integers, strings or lists of integers only
        if isinstance(v, float) or isinstance(v, bool) or isinstance(v, dict) or (
                isinstance(v, list) and not all(_is_int(x) for x in v)):
            raise ModelError(f"model config: {key} has an unexpected type")


def model_config(config: dict) -> ModelConfig:
    """The checked ModelConfig of a config.json, its size capped before anything is built."""
    check_model_dict(config.get("model"))
    cfg = ModelConfig.from_dict(config["model"])
    try:
        limits.check_model_size(cfg)
    except limits.LimitError as e:
        raise ModelError(str(e)) from None
    return cfg


def _check_weights_file(weights: Path, model: VAE) -> None:
    """Size, names, dtypes and exact shapes from the safetensors header, before reading the data."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    n_bytes = 4 * sum(int(torch.Size(s).numel()) for s in expected.values())
    size = weights.stat().st_size
    if size > n_bytes + (1 << 20):
        raise ModelError(f"{weights} is {size:,} bytes; the model's config needs {n_bytes:,}: corrupt or replaced")
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = set(f.keys())
            if keys != set(expected):
                missing, extra = sorted(set(expected) - keys), sorted(keys - set(expected))
                raise ModelError(f"{weights} does not fit its config (missing {missing[:3]}, unexpected {extra[:3]})")
            for k in sorted(keys):
                sl = f.get_slice(k)
                if tuple(sl.get_shape()) != expected[k] or sl.get_dtype() not in ("F32",):
                    raise ModelError(f"{weights}: tensor {k} is {sl.get_dtype()} {tuple(sl.get_shape())}; the config "
                                     f"needs F32 {expected[k]}")
    except (SafetensorError, OSError) as e:
        raise ModelError(f"cannot load weights {weights}: {str(e).splitlines()[0] if str(e) else e}") from None


def load_checkpoint(ckpt_dir: Path, device: str = "cpu") -> tuple[VAE, dict]:
    """Build the model from config.json and load its weights after checking their sha256."""
    ckpt_dir = Path(ckpt_dir)
    config = read_config(ckpt_dir)
    cfg = model_config(config)
    weights = ckpt_dir / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{weights} is missing")
    if weights.stat().st_size > limits.MAX_MODEL_FILE_BYTES:
        raise ModelError(f"{weights} is larger than {limits.MAX_MODEL_FILE_BYTES:,} bytes")
    digest = sha256_file(weights)
    if digest != config.get("weights_sha256"):
        raise ModelError(f"{weights} does not match the sha256 in its config.json "
                         f"({digest[:12]}... vs {str(config.get('weights_sha256'))[:12]}...): corrupt or replaced")
    model = build_model(cfg)
    _check_weights_file(weights, model)
    try:
        state = load_file(str(weights), device=device)
        bad = sorted(k for k, v in state.items() if not bool(torch.isfinite(v).all()))
        if bad:
            raise ModelError(f"{weights}: tensor {bad[0]} holds NaN or infinite values")
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise ModelError(f"cannot load weights {weights}: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return model, config


def resolve_model(ref: str) -> Path:
    """Model reference -> checkpoint directory (see module docstring)."""
    bundled = bundled_models()
    if ref in bundled:
        return bundled[ref]
    path = Path(ref)
    if (path / CONFIG).is_file():
        return path
    if path.is_dir():
        ckpt = newest_checkpoint(path)
        if ckpt is not None:
            return ckpt
        raise ModelError(f"{path} holds no checkpoint (no config.json, no checkpoints/epoch_*/)")
    names = ", ".join(bundled) or "none installed"
    raise ModelError(f"unknown model {ref!r}: not a bundled model ({names}) nor a checkpoint directory")


def load_model(ref: str, device: str = "cpu") -> tuple[VAE, dict, Path]:
    path = resolve_model(ref)
    model, config = load_checkpoint(path, device)
    return model, config, path
