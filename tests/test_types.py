"""static/herald.d.ts, herald.d.mts and herald-inbox.d.ts, checked by the TypeScript
compiler (installed by scripts/test into tests/js): host code using herald.js as a script
and as an ES module, and <herald-inbox>, type-checks under --strict; misuse is caught."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # no database; node and tsc, a few seconds

ROOT = Path(__file__).resolve().parent.parent
TYPES = ROOT / "tests" / "js" / "types"
TSC = ROOT / "tests" / "js" / "node_modules" / ".bin" / "tsc"


def tsc(*args: str) -> subprocess.CompletedProcess[str]:
    assert TSC.exists(), "scripts/test installs TypeScript into tests/js"
    return subprocess.run([str(TSC), *args], cwd=TYPES, capture_output=True, text=True,
                          timeout=120)


def test_host_code_type_checks_against_the_declarations() -> None:
    result = tsc("-p", "tsconfig.json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_declarations_catch_misuse() -> None:
    result = tsc("--noEmit", "--strict", "--module", "es2022", "--moduleResolution",
                 "bundler", "--lib", "es2020,dom", "misuses.ts")
    assert result.returncode != 0
    errors = sorted(line.split(": error ")[1].split(":")[0]
                    for line in result.stdout.splitlines() if ": error " in line)
    assert errors == ["TS2339", "TS2339", "TS2339", "TS2345", "TS2345", "TS2554",
                      "TS2554"], \
        result.stdout


def test_the_component_declarations_catch_misuse() -> None:
    """<herald-inbox>: a token of the wrong type, a detail field another event has, and
    writing a read-only property are each an error."""
    result = tsc("--noEmit", "--strict", "--lib", "es2020,dom", "misuses_component.ts")
    errors = sorted(line.split(": error ")[1].split(":")[0]
                    for line in result.stdout.splitlines() if ": error " in line)
    assert errors == ["TS2322", "TS2339", "TS2540"], result.stdout
