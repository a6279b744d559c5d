"""The `herald` command, run as a user would: real processes, real ports."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import asyncpg
import pytest

from app import auth
from app.config import SETTINGS
from herald_dev.net import free_port
from tests.conftest import SECRET, run_in_thread
from tests.helpers import ROOT, clean_env, wait_http

HERALD = [sys.executable, "-m", "app.cli"]




def herald(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HERALD, *args], env=env or clean_env(), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


class Proc:
    """A background `herald` process whose output lines we can wait for."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen([*HERALD, *args], env=env, cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_line(self, needle: str, timeout: float = 10) -> str:
        import selectors

        assert self.popen.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.popen.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                line = self.popen.stdout.readline()
                if needle in line:
                    return line
        raise AssertionError(f"no line with {needle!r}")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(*args: str, env: dict[str, str]) -> Proc:
        proc = Proc(*args, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


@pytest.mark.parametrize("command", [[], ["serve"], ["migrate"], ["token"], ["send"], ["tail"],
                                     ["prune"]])
def test_help_everywhere(command: list[str]) -> None:
    result = herald(*command, "--help")
    assert result.returncode == 0 and "usage: herald" in result.stdout


def test_token_is_a_valid_jwt_for_the_user() -> None:
    result = herald("token", "alice", "--ttl", "120", env=clean_env(HERALD_SECRET=SECRET))
    assert result.returncode == 0, result.stderr
    claims = auth.verify_token(SECRET, result.stdout.strip())
    assert claims.user == "alice" and 100 < claims.expires_at - time.time() <= 120


def test_every_setting_is_declared_once_and_documented_where_users_look() -> None:
    """app/config.py declares each setting once; the configuration table operators read
    (docs/operations.md) lists
    every one (and nothing else), and `herald serve --help` shows, for each flag it
    takes, the declared help and the variable behind it."""
    reference = (ROOT / "docs" / "operations.md").read_text()
    table = reference[reference.index("## Configuration"):
                      reference.index("## Limits and security")]
    variables = {spec.env for spec in SETTINGS.values()}
    assert variables - set(re.findall(r"`(HERALD_[A-Z_]+)`", table)) == set()
    assert set(re.findall(r"^\| `(HERALD_[A-Z_]+)`", table, re.M)) <= variables
    shown = " ".join(herald("serve", "--help").stdout.split())
    flags = [spec for spec in SETTINGS.values() if spec.flag + " " in shown]
    assert len(flags) >= 9
    for spec in flags:
        assert f"env {spec.env}; default {spec.documented_default}" in shown, spec.name
        assert " ".join(spec.help.split()[:3]) in shown, spec.name


@pytest.mark.parametrize("args, env, message", [
    (["token", "alice"], {"HERALD_DATABASE_URL": "postgresql://x@127.0.0.1/db"},
     "HERALD_SECRET is required"),
    (["serve"], {"HERALD_PORT": "eighty", "HERALD_SECRET": "s"}, "HERALD_PORT='eighty'"),
    (["serve", "--port", "99999"], {"HERALD_SECRET": "s"}, "--port"),
    (["serve"], {"HERALD_DATABASE_URL": "mysql://x/y", "HERALD_SECRET": "s"},
     "HERALD_DATABASE_URL"),
    (["serve"], {"HERALD_ALLOWED_ORIGINS": "evil", "HERALD_SECRET": "s",
                 "HERALD_DATABASE_URL": "postgresql://x@127.0.0.1/db"}, "HERALD_ALLOWED_ORIGINS"),
    (["serve", "--bogus"], {}, "unrecognized arguments"),
    (["send", "alice", "t", "--data", "[1]"], {}, "data must be a JSON object"),
    (["send", "alice", "t", "--data", "{oops"], {}, "--data must be a JSON object"),
    (["send", "alice", "t", "--link", "javascript:x"], {}, "link must be"),
    (["send", "alice", "t", "--expires-at", "tomorrow"], {}, "expires_at must be an ISO 8601"),
    (["send", "alice", "t", "--category", ""], {}, "category must be a string of 1-64"),
    (["serve"], {"HERALD_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing",
                 "HERALD_SECRET": "s"}, "herald: error:"),
])
def test_bad_configuration_fails_with_one_clear_line(args, env, message, tmp_path) -> None:
    result = herald(*args, env=clean_env(HERALD_DATA_DIR=str(tmp_path), **env))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr


def test_serve_refuses_a_database_not_at_head(make_database) -> None:
    url = make_database()
    result = herald("serve", "--port", str(free_port()),
                    env=clean_env(HERALD_DATABASE_URL=url, HERALD_SECRET=SECRET))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "herald: error: database has no Herald schema: run `herald migrate` "
        "(or `alembic upgrade head`)"]


def test_serve_send_tail_on_an_external_database(database_url, procs, user) -> None:
    port = free_port()
    env = clean_env(HERALD_DATABASE_URL=database_url, HERALD_SECRET=SECRET,
                    HERALD_PORT=str(port), HERALD_NODE="cli-node")
    server = procs("serve", env=env)
    wait_http(port)
    tail = procs("tail", user, "--json", env=env)
    tail.wait_line('"welcome"')
    sent = herald("send", user, "Order shipped", "--body", "On its way",
                  "--data", '{"order_id": 7}', "--link", "/orders/7", env=env)
    assert sent.returncode == 0, sent.stderr
    row = json.loads(sent.stdout)
    assert row["seq"] == 1 and row["user_id"] == user
    frame = json.loads(tail.wait_line('"notification"'))
    assert frame["id"] == row["id"] and frame["title"] == "Order shipped"
    assert frame["data"] == {"order_id": 7}
    sent = herald("send", user, "Flash sale", "--category", "deals", "--expires-at",
                  "2099-06-01T10:00:00+02:00", env=env)
    assert sent.returncode == 0, sent.stderr
    frame = json.loads(tail.wait_line('"Flash sale"'))
    assert frame["seq"] == 2 and frame["category"] == "deals"
    assert frame["expires_at"] == "2099-06-01T08:00:00Z" and frame["archived"] is False
    assert tail.stop() in (0, -signal.SIGTERM)
    assert server.stop() == 0


def _node_roles(data_dir: Path) -> list[str]:
    """The roles the node's database sessions run as (the node shares the embedded
    server with this process)."""
    from app import db

    async def read() -> list[str]:
        conn = await asyncpg.connect(db.asyncpg_dsn(db.start_embedded(data_dir)))
        try:
            rows = await conn.fetch(
                "SELECT DISTINCT usename FROM pg_stat_activity "
                "WHERE application_name LIKE 'herald%' AND pid <> pg_backend_pid()")
            return sorted(r["usename"] for r in rows)
        finally:
            await conn.close()

    return run_in_thread(read())


def test_embedded_quickstart(tmp_path, procs) -> None:
    """The README's promise: no configuration at all, serve + send + tail work together
    on the embedded PostgreSQL, and the send shows up in tail within a second."""
    port = free_port()
    env = clean_env(HERALD_DATA_DIR=str(tmp_path / "data"), HERALD_PORT=str(port))
    server = procs("serve", "--dev", env=env)
    wait_http(port, timeout=90)
    assert _node_roles(tmp_path / "data") == ["herald_app"]  # not the superuser
    tail = procs("tail", "alice", env=env)
    time.sleep(1.0)
    started = time.monotonic()
    sent = herald("send", "alice", "Order shipped", env=env)
    assert sent.returncode == 0, sent.stderr
    line = tail.wait_line("Order shipped", timeout=5)
    assert line.startswith("#1 ")
    assert time.monotonic() - started < 5  # includes the `herald send` process start-up
    assert (tmp_path / "data" / "secret").exists()
    assert server.stop() == 0


@pytest.mark.cluster
def test_cluster_dev_gives_its_nodes_the_dev_login(database_url, procs) -> None:
    """`herald cluster --dev`: the two-users-two-nodes demo without HERALD_DEV=1."""
    port = free_port()
    cluster = procs("cluster", "--nodes", "2", "--port", str(port), "--dev",
                    env=clean_env(HERALD_DATABASE_URL=database_url, HERALD_SECRET=SECRET))
    try:
        wait_http(port, "/login", timeout=60)
        wait_http(port, "/login")  # both nodes (round robin)
    finally:
        assert cluster.stop() == 0
