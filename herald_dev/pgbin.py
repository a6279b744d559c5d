"""The PostgreSQL binaries the ``pgserver`` package ships (initdb, pg_ctl, postgres,
pg_basebackup, …), and how to run them: PostgreSQL (and PgBouncer) refuse to run as
root, so as root they run as the ``pgserver`` user, as pgserver itself does."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pgserver

BIN = Path(pgserver.__file__).resolve().parent / "pginstall" / "bin"
USER = "pgserver"


def server_ids() -> tuple[int | None, int | None]:
    """(uid, gid) to run a server process as: (None, None) unless we are root, then the
    ``pgserver`` user's (created when missing)."""
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-r", "-s", "/bin/false", USER], check=True)
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def server_user() -> dict[str, int | None]:
    """``server_ids()`` as ``subprocess`` arguments (``user``, ``group``)."""
    uid, gid = server_ids()
    return {"user": uid, "group": gid}
