"""docs/DESIGN.md stays the map of the code: every module listed, no pointers to missing files."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("bbans_vae", "cli") for p in (ROOT / d).rglob("*.py"))


def test_every_module_is_in_the_design_module_map():
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+\.py)` \|", design, re.M))
    missing = {p.relative_to(ROOT).as_posix() for p in SOURCES} - listed
    assert not missing, f"add them to docs/DESIGN.md (python tools/module_map.py): {sorted(missing)}"
    gone = {m for m in listed if not (ROOT / m).is_file()}
    assert not gone, f"listed in docs/DESIGN.md but not in the tree: {sorted(gone)}"


def test_docstrings_point_inside_the_repository():
    cite = "SPEC " + "\u00a7"                   # spelled so that this file does not match itself
    for p in SOURCES + sorted((ROOT / "tests").glob("*.py")):
        assert cite not in p.read_text(), f"{p}: cites a SPEC file that is not in the repository"


def test_the_install_ships_every_package_and_no_top_level_cli():
    """`pip install .` installs what pyproject lists: every package under bbans_vae/ must be
    there, and the CLI installs as vaecompress_cli (never as a top-level `cli`)."""
    tomllib = __import__("pytest").importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = project["tool"]["setuptools"]
    packages = set(tool["packages"])
    found = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "bbans_vae").rglob("__init__.py")}
    assert found <= packages, f"add to [tool.setuptools] packages: {sorted(found - packages)}"
    assert "cli" not in packages and tool["package-dir"] == {"vaecompress_cli": "cli"}
    assert project["project"]["scripts"] == {"vaecompress": "vaecompress_cli.main:main"}
