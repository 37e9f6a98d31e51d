"""The README's module map names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "elastic_slice"


def test_readme_module_map_matches_the_package() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## How it is built"):readme.index("## Tests")]
    named = {name for name in re.findall(r"`([a-z0-9_/]+\.py)`", section) if not name.startswith("tests/")}
    present = {
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
        if path.name not in ("__main__.py",) and not (path.name == "__init__.py" and path.parent.name != "arch")
    }
    assert sorted(present - named) == [], "modules missing from the README's module map"
    assert sorted(named - present) == [], "the README's module map names modules that do not exist"
