"""Print the module map of docs/DESIGN.md (module -> job -> lines) from the source tree.

    python tools/module_map.py

The job is the first line of each module's docstring; lines are `wc -l`. Paste the output over
the table in docs/DESIGN.md ("Module map"); tests/test_design.py checks every module is listed.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules() -> list[Path]:
    return sorted(p for d in ("bbans_vae", "cli") for p in (ROOT / d).rglob("*.py"))


def row(path: Path) -> str:
    text = path.read_text()
    doc = (ast.get_docstring(ast.parse(text)) or "").strip()
    first = " ".join(doc.split("\n\n", 1)[0].split())              # first paragraph, one line
    job = (first.split(". ", 1)[0].rstrip(".") if first else "(package marker)")[:120]
    return f"| `{path.relative_to(ROOT).as_posix()}` | {job.replace('|', '/')} | {len(text.splitlines())} |"


if __name__ == "__main__":
    print("| module | job | lines |\n|---|---|---:|")
    for p in modules():
        print(row(p))
