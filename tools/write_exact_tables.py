"""Regenerate the exact coder path's bundled tables with mpmath (bbans_vae/bundled/exact/*.npy).

    python tools/write_exact_tables.py

The tables are part of the file format: their sha256 digests are pinned in
bbans_vae/exact/tables.py and any change needs a new coder path name.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bbans_vae.exact.tables import TABLE_DIR, TABLE_SPECS, build_table, table_sha256  # noqa: E402


def write_tables() -> None:
    TABLE_DIR.mkdir(parents=True, exist_ok=True)
    for name in TABLE_SPECS:
        a = build_table(name)
        np.save(TABLE_DIR / f"{name}.npy", a, allow_pickle=False)
        print(f"{name}: {len(a)} entries, sha256 {table_sha256(a)}")


if __name__ == "__main__":
    write_tables()
