"""Herald as others install it: a plain (non-editable) `pip install` into a fresh virtual
environment, built the way docker/Dockerfile builds the image (its COPY lines give the
build context, its RUN lines are run as written), then used from another directory.

The installed package must carry its templates, static files and migrations, and none of
the development harness (herald_dev/, bench/); without the `embedded` extra there is no
pgserver, and saying so is one line."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.request import urlopen

import pytest

from app import client as herald_client
from app import schema
from herald_dev.net import free_port
from tests.conftest import SECRET, token_for
from tests.helpers import clean_env, wait_http

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _dockerfile_steps() -> tuple[list[str], list[str]]:
    """The sources the image copies and the RUN commands that install Herald."""
    text = DOCKERFILE.read_text().replace("\\\n", "")
    copies = [source for line in re.findall(r"^COPY (.+)$", text, re.M)
              for source in line.split()[:-1]]
    runs = [run for run in re.findall(r"^RUN (.+)$", text, re.M) if "pip install" in run]
    return copies, runs


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a fresh venv holding Herald as the Dockerfile installs it."""
    base = tmp_path_factory.mktemp("install")
    context = base / "image-workdir"
    context.mkdir()
    copies, runs = _dockerfile_steps()
    assert len(runs) == 2, runs  # dependencies, then Herald itself
    for source in copies:
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, context / source,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, context / source)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = clean_env(PATH=f"{venv / 'bin'}:/usr/bin:/bin", VIRTUAL_ENV=str(venv))
    for run in runs:
        result = subprocess.run(["bash", "-c", f"set -o pipefail; {run}"], cwd=context,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (run, result.stderr[-2000:])
    shutil.rmtree(context)  # nothing may depend on the build directory
    return venv / "bin"


def test_the_package_carries_the_product_and_not_the_harness(installed: Path) -> None:
    probe = ("import importlib.util as u, app, app.resources as r; "
             "print(app.__file__); print(r.folder('templates')); print(r.folder('static')); "
             "print(r.folder('migrations')); "
             "print([m for m in ('herald_dev', 'bench', 'tests', 'pgserver', 'app.loadgen', "
             "'app.checker', 'app.cluster') if u.find_spec(m) is not None])")
    result = subprocess.run([str(installed / "python"), "-c", probe], cwd="/",
                            env=clean_env(), capture_output=True, text=True, check=True)
    package, templates, static, migrations, present = result.stdout.splitlines()
    site = Path(package).parent
    assert "site-packages" in str(site)
    assert Path(templates) == site / "templates" and (site / "templates/inbox.html").exists()
    assert Path(static) == site / "static" and (site / "static/herald.js").exists()
    assert Path(migrations) == site / "migrations"
    shipped = sorted(p.name for p in (site / "migrations" / "versions").glob("*.py"))
    assert shipped == sorted(p.name for p in (ROOT / "migrations/versions").glob("*.py"))
    assert present == "[]"


def test_migrate_and_serve_from_another_directory(installed: Path, make_database,
                                                  tmp_path: Path) -> None:
    url = make_database()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    herald = str(installed / "herald")
    env = clean_env(HERALD_DATABASE_URL=url, HERALD_SECRET=SECRET, HERALD_API_KEY="k")
    migrate = subprocess.run([herald, "migrate"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    assert f"schema at revision {schema.head_revision()}" in migrate.stderr

    port = free_port()
    node = subprocess.Popen([herald, "serve", "--port", str(port)], cwd=elsewhere, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(port)
        with urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            assert page.status == 200 and b"/static/herald.js" in page.read()
        with urlopen(f"http://127.0.0.1:{port}/static/herald.js", timeout=5) as script:
            assert script.status == 200 and b"hello" in script.read()
        asyncio.run(_one_push(port, herald, env, elsewhere))
    finally:
        node.terminate()
        assert node.wait(15) == 0


async def _one_push(port: int, herald: str, env: dict[str, str], cwd: Path) -> None:
    """`herald send` from the install reaches a socket of the installed node."""
    conn = await herald_client.connect(f"ws://127.0.0.1:{port}/ws")
    try:
        await conn.write_message(herald_client.hello_frame(token_for("installed"), 0))
        welcome = herald_client.parse(await conn.read_message())[0]
        assert welcome["type"] == "welcome"
        sent = await asyncio.to_thread(
            subprocess.run, [herald, "send", "installed", "From the wheel"], cwd=cwd, env=env,
            capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        frame = herald_client.parse(await asyncio.wait_for(conn.read_message(), 10))[0]
        assert (frame["type"], frame["title"]) == ("notification", "From the wheel")
    finally:
        conn.close()


def test_what_is_not_installed_says_so_in_one_line(installed: Path, tmp_path: Path) -> None:
    herald = str(installed / "herald")
    for args, message in (
        (["serve", "--data-dir", str(tmp_path)], "pip install 'herald[embedded]'"),
        (["bench", "--quick"], "herald bench is a developer command"),
        (["cluster"], "herald cluster is a developer command"),
    ):
        result = subprocess.run([herald, *args], cwd=tmp_path, env=clean_env(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
