"""docker/ has no engine to run on here, so each piece is tested on its own: the compose
file's structure, the exact commands the services run, the image's healthcheck, and
that the nginx config the cluster tests use is docker/nginx.conf with only the node
addresses and port swapped."""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import yaml

from app import db, schema
from herald_dev.cluster import render_nginx_conf
from herald_dev.net import free_port
from tests.conftest import run_in_thread
from tests.helpers import wait_http

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_services_and_order(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "node1", "node2", "node3", "nginx"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == "alembic upgrade head"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    names = set()
    for name in ("node1", "node2", "node3"):
        node = services[name]
        assert node["command"] == "herald serve"
        assert node["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert node["environment"]["HERALD_SECRET"].startswith("${HERALD_SECRET:?")
        names.add(node["environment"]["HERALD_NODE"])
    assert names == {"node1", "node2", "node3"}
    nginx = services["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    # The nodes believe forwarded headers from nginx's fixed address only.
    address = nginx["networks"]["default"]["ipv4_address"]
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    for name in ("node1", "node2", "node3"):
        assert services[name]["environment"]["HERALD_TRUSTED_PROXIES"] == address
    assert set(nginx["depends_on"]) == {"node1", "node2", "node3"}


def test_dockerfile_copies_what_exists_and_runs_as_non_root() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    assert re.search(r"^USER herald$", text, re.M)
    assert re.search(r'^CMD \["herald", "serve"\]$', text, re.M)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} and ${VAR:?error} substitution."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2], match[3]
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise AssertionError(f"compose would refuse to start: {arg}")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def _healthcheck_command() -> list[str]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.M)
    assert match, "no exec-form HEALTHCHECK in the Dockerfile"
    return [str(BIN / "python") if arg == "python" else arg for arg in json.loads(match[1])]


def test_compose_migrate_and_node_commands_work(compose: dict, make_database) -> None:
    """Run the services' commands exactly as compose would (repo root = the image's
    WORKDIR): PostgreSQL's init script, the migration as the superuser, the node as the
    login role the init script made (a member of herald_node only), then the image's
    HEALTHCHECK against the node, then `docker stop`'s SIGTERM."""
    url = make_database()
    parts = urlsplit(url)
    assert shutil.which("psql"), "psql (PostgreSQL's client) runs the init script"
    init = subprocess.run(
        [str(DOCKER / "postgres-init.sh")], capture_output=True, text=True,
        env={**os.environ, "POSTGRES_USER": parts.username or "postgres",
             "POSTGRES_DB": url, "HERALD_DB_PASSWORD": "node-password"})
    assert init.returncode == 0, init.stderr
    assert compose["services"]["postgres"]["volumes"][1].startswith(
        "./postgres-init.sh:/docker-entrypoint-initdb.d/")
    node_url = urlunsplit(parts._replace(netloc="herald_app:node-password@"
                                         + parts.netloc.rsplit("@", 1)[-1]))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HERALD_DATABASE_URL": url}
    migrate = shlex.split(compose["services"]["migrate"]["command"])
    subprocess.run(migrate, cwd=ROOT, env=env, check=True, capture_output=True)

    async def at_head() -> None:
        conn = await asyncpg.connect(db.asyncpg_dsn(url))
        try:
            await schema.check_at_head(conn)
        finally:
            await conn.close()

    run_in_thread(at_head())

    port = free_port()
    shell = {"HERALD_SECRET": "compose-secret", "HERALD_API_KEY": "compose-key",
             "HERALD_DB_PASSWORD": "node-password"}
    node_env = {k: interpolate(str(v), shell)
                for k, v in compose["services"]["node1"]["environment"].items()}
    # Only the address of the database and the port differ from the compose service.
    assert urlsplit(node_env["HERALD_DATABASE_URL"]).username == "herald_app"
    node_env.update(HERALD_DATABASE_URL=node_url, HERALD_PORT=str(port))
    node = subprocess.Popen(shlex.split(compose["services"]["node1"]["command"]), cwd=ROOT,
                            env={**env, **node_env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_http(port)
        check = subprocess.run(_healthcheck_command(), env={**env, "HERALD_PORT": str(port)},
                               capture_output=True, timeout=10)
        assert check.returncode == 0, check.stderr
        node.send_signal(signal.SIGTERM)
        assert node.wait(15) == 0
        dead = subprocess.run(_healthcheck_command(), env={**env, "HERALD_PORT": str(port)},
                              capture_output=True, timeout=10)
        assert dead.returncode != 0  # the healthcheck can fail
    finally:
        if node.poll() is None:
            node.kill()


def test_cluster_nginx_config_is_the_docker_one() -> None:
    template = (DOCKER / "nginx.conf").read_text()
    rendered = render_nginx_conf(template, 9000, [9001, 9002, 9003])
    changed = [line for line in difflib.ndiff(template.splitlines(), rendered.splitlines())
               if line[:1] in "+-"]
    indent = " " * 8
    expected = [f"- {indent}server node{i}:8888 max_fails=0;" for i in (1, 2, 3)]
    expected += [f"+ {indent}server 127.0.0.1:{p} max_fails=0;"
                 for p in (9001, 9002, 9003)]
    expected += [f"- {indent}listen 8080;", f"+ {indent}listen 127.0.0.1:9000;"]
    assert sorted(changed) == sorted(expected)
    for directive in ("proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                      "proxy_set_header Connection $connection_upgrade;",
                      "proxy_read_timeout 3600s;", "proxy_next_upstream error timeout"):
        assert directive in template


def test_rendered_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf((DOCKER / "nginx.conf").read_text(), free_port(),
                                      [free_port(), free_port()]))
    result = subprocess.run(
        ["nginx", "-t", "-c", str(conf), "-p", str(tmp_path), "-g",
         f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
