"""Where Herald's non-Python parts are: the page's ``templates/`` and ``static/`` files and
the alembic ``migrations/``.

They are written in the repository's top-level folders. A built wheel ships them inside
the package (setup.cfg maps ``app.templates`` to ``templates/`` and so on), so an
installed Herald finds them next to its modules and a source checkout (an editable
install) one level up. Nothing else in ``app/`` looks up files by path.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def folder(name: str) -> Path:
    """The directory of ``templates``, ``static`` or ``migrations``."""
    for candidate in (PACKAGE / name, PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"herald: {name}/ is missing from {PACKAGE} and its parent: "
                            "reinstall Herald (pip install herald)")


def alembic_ini() -> Path | None:
    """``alembic.ini`` of a source checkout (its logging settings), or None when installed."""
    ini = PACKAGE.parent / "alembic.ini"
    return ini if (PACKAGE.parent / "migrations").is_dir() and ini.exists() else None
