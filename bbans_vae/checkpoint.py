"""Checkpoints: safetensors weights + a JSON config, never pickle.

A checkpoint is a directory holding
    model.safetensors   the weights (loading it runs no code)
    config.json         {"format", "model": ModelConfig, "weights_sha256", "dataset", "epoch",
                         "command", "seed", "git_revision", "train_subset", "metrics", ...}
The sha256 of the weights file is checked on every load and recorded in every .vae file.

A *model reference* (what `--model` and `eval MODEL` accept) is a bundled model name (listed by
`vaecompress models`), a checkpoint directory, or a training run directory (its newest checkpoint).

Decoding without a model reference finds the model a file names (`locate_model`): the bundled
model of that name, then any bundled model, then the checkpoints under the directories of
`$VAECOMPRESS_MODELS` (separated by the OS path separator), always by the weights' sha256 the
file records. A path written in a file is never opened.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ModelError
from .models import VAE, ModelConfig, build_model

FORMAT = "vaecompress-checkpoint/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled" / "models"
MAX_CONFIG_BYTES = 1 << 20
MODELS_ENV = "VAECOMPRESS_MODELS"


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


def read_config(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / CONFIG
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; not a vaecompress config")
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path} is missing: not a vaecompress checkpoint directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelError(f"{path} is not a {FORMAT} config")
    return config


def load_checkpoint(ckpt_dir: Path, device: str = "cpu") -> tuple[VAE, dict]:
    """Build the model from config.json and load its weights after checking their sha256."""
    ckpt_dir = Path(ckpt_dir)
    config = read_config(ckpt_dir)
    cfg = ModelConfig.from_dict(config.get("model") or {})
    weights = ckpt_dir / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{weights} is missing")
    digest = sha256_file(weights)
    if digest != config.get("weights_sha256"):
        raise ModelError(f"{weights} does not match the sha256 in its config.json "
                         f"({digest[:12]}... vs {str(config.get('weights_sha256'))[:12]}...): corrupt or replaced")
    model = build_model(cfg)
    try:
        state = load_file(str(weights), device=device)
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise ModelError(f"cannot load weights {weights}: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return model, config


def bundled_models() -> dict[str, Path]:
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir()) if (p / CONFIG).is_file()}


def newest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(p for p in (run_dir / "checkpoints").glob("epoch_*") if (p / CONFIG).is_file())
    return ckpts[-1] if ckpts else None


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


def _checkpoints_under(root: Path) -> list[Path]:
    """Checkpoint directories at `root`, one level below it, and in run directories there."""
    found: list[Path] = []
    for d in [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []:
        if (d / CONFIG).is_file():
            found.append(d)
        found += sorted(p for p in (d / "checkpoints").glob("epoch_*") if (p / CONFIG).is_file())
    return found


def models_search_path() -> list[Path]:
    """The directories of $VAECOMPRESS_MODELS, in order."""
    return [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]


def locate_model(name: str, sha256_prefix: bytes, search_path: list[Path] | None = None) -> Path:
    """The checkpoint directory whose weights' sha256 starts with `sha256_prefix` (see the module
    docstring for the order). ModelError, naming the file's model, if there is none."""
    bundled = bundled_models()
    candidates = ([bundled[name]] if name in bundled else []) + list(bundled.values())
    for root in models_search_path() if search_path is None else search_path:
        candidates += _checkpoints_under(Path(root))
    for ckpt in candidates:
        try:
            digest = str(read_config(ckpt).get("weights_sha256", ""))
        except ModelError:
            continue
        if digest[:2 * len(sha256_prefix)] == sha256_prefix.hex():
            return ckpt
    raise ModelError(f"this file was encoded with model {name!r} (weights sha256 {sha256_prefix.hex()[:16]}...), "
                     f"which is not bundled nor under ${MODELS_ENV}; pass the model (--model) or add its "
                     f"checkpoint directory to ${MODELS_ENV}")
