"""Print a pip constraints file pinning every direct dependency to its declared floor.

`name>=X` (with or without an upper bound or a marker) becomes `name==X`, so that the minimum-versions
job in .ci/run installs exactly what pyproject promises works. A dependency without a floor is an
error: there would be nothing to test.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement


def lowest_constraints(pyproject: Path) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    lines = []
    for text in dependencies:
        requirement = Requirement(text)
        floors = [spec.version for spec in requirement.specifier if spec.operator in (">=", "==", "~=")]
        if len(floors) != 1:
            raise SystemExit(f"{text!r}: needs exactly one floor (>=, == or ~=) for the minimum-versions job")
        marker = f"; {requirement.marker}" if requirement.marker else ""
        lines.append(f"{requirement.name}=={floors[0]}{marker}")
    return lines


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "pyproject.toml"
    print("\n".join(lowest_constraints(path)))
