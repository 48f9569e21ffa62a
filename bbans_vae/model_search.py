"""Finding and reading checkpoint configs without torch (so `info` and `models` stay light).

`decode` without `--model` looks a file's model up by the sha256 prefix in its header among the
bundled models and the checkpoints in `$VAECOMPRESS_MODELS` (folders separated by ':'); it never
loads a path written in a file, and its error is the same whether or not a folder exists.
config.json is parsed strictly: no NaN/Infinity, integers of at most 18 digits, nesting at most
32 levels, at most 1 MiB.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ModelError

FORMAT = "vaecompress-checkpoint/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled" / "models"
MAX_CONFIG_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 18
MODELS_ENV = "VAECOMPRESS_MODELS"
MAX_SEARCH_ENTRIES = 1000          # checkpoint folders looked at per $VAECOMPRESS_MODELS folder


def _json_depth(obj, limit: int) -> int:
    depth, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        depth = max(depth, d)
        if depth > limit:
            break
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return depth


def parse_config_text(text: str, where: str) -> dict:
    """Strict JSON: no NaN/Infinity, no huge integers, bounded nesting; raises ModelError."""
    def bad_constant(name):
        raise ValueError(f"{name} is not allowed")

    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > MAX_INT_DIGITS:
            raise ValueError(f"an integer of {len(digits)} digits")
        return int(digits)

    try:
        config = json.loads(text, parse_constant=bad_constant, parse_int=parse_int)
    except RecursionError:
        raise ModelError(f"{where} is nested too deeply; not a vaecompress config") from None
    except ValueError as e:  # JSONDecodeError included
        raise ModelError(f"cannot read {where}: {str(e)[:200]}") from None
    if _json_depth(config, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ModelError(f"{where} is nested more than {MAX_JSON_DEPTH} levels deep; not a vaecompress config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelError(f"{where} is not a {FORMAT} config")
    return config


def read_config(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / CONFIG
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ModelError(f"{path} is missing: not a vaecompress checkpoint directory") from None
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; not a vaecompress config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"cannot read {path}: not UTF-8") from None
    return parse_config_text(text, str(path))


def bundled_models() -> dict[str, Path]:
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir()) if (p / CONFIG).is_file()}


def newest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(p for p in (run_dir / "checkpoints").glob("epoch_*") if (p / CONFIG).is_file())
    return ckpts[-1] if ckpts else None


def models_search_path() -> list[Path]:
    """The directories of $VAECOMPRESS_MODELS, in order."""
    return [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]


def _checkpoints_under(root: Path) -> list[Path]:
    """Checkpoint directories at `root`, one level below it, and in run directories there
    (every epoch_* checkpoint); at most MAX_SEARCH_ENTRIES folders are looked at."""
    found: list[Path] = []
    try:
        subdirs = []
        if root.is_dir():
            for i, p in enumerate(sorted(root.iterdir())):
                if i >= MAX_SEARCH_ENTRIES:
                    break
                if p.is_dir():
                    subdirs.append(p)
        for d in [root, *subdirs] if root.is_dir() else []:
            if (d / CONFIG).is_file():
                found.append(d)
            found += sorted(p for p in (d / "checkpoints").glob("epoch_*") if (p / CONFIG).is_file())
    except OSError:
        pass
    return found[:MAX_SEARCH_ENTRIES]


def find_model(sha256_prefix: bytes, name_hint: str = "", search_path: list[Path] | None = None) -> Path:
    """The checkpoint whose weights sha256 starts with `sha256_prefix`: the bundled model named
    `name_hint` (version-1 files), any bundled model, then the checkpoints under `search_path`
    (default $VAECOMPRESS_MODELS); never a path from the file. The error names the file's model
    and is the same whether or not a folder of that name exists."""
    want = sha256_prefix.hex()
    bundled = bundled_models()
    candidates = ([bundled[name_hint]] if name_hint in bundled else []) + list(bundled.values())
    for root in models_search_path() if search_path is None else search_path:
        candidates += _checkpoints_under(Path(root))
    for path in candidates:
        try:
            sha = read_config(path).get("weights_sha256")
        except ModelError:
            continue
        if isinstance(sha, str) and sha.startswith(want):
            return path
    from .container import printable
    named = f" (named '{printable(name_hint)}' in the file)" if name_hint else ""
    raise ModelError(f"this file needs the model with weights sha256 {want[:16]}...{named}, which is neither a "
                     f"bundled model nor a checkpoint under ${MODELS_ENV}; pass --model with the encoder's "
                     f"checkpoint or add its folder to ${MODELS_ENV}")


def locate_model(name: str, sha256_prefix: bytes, search_path: list[Path] | None = None) -> Path:
    """`find_model` with the argument order of the API (bbans_vae.api.decompress)."""
    return find_model(sha256_prefix, name, search_path)


def model_name_for(sha256_prefix: bytes) -> str | None:
    """Folder name of the model with this weights sha256 prefix, or None."""
    try:
        return find_model(sha256_prefix).name
    except ModelError:
        return None
