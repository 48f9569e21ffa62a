"""Settings objects with overrides: the one way a command's options are laid over defaults."""
from __future__ import annotations

import dataclasses
from typing import TypeVar

S = TypeVar("S")


def with_overrides(base: S, **overrides) -> S:
    """`base` (a dataclass) with every override that is not None; validated if it can be."""
    merged = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    validate = getattr(merged, "validate", None)
    if callable(validate):
        validate()
    return merged
