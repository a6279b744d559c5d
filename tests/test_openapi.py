"""schemathesis, driven by the OpenAPI description we ship (docs/openapi.yaml), against a
live `herald serve`: no 5xx, status codes, content types and bodies as documented, and
invalid input rejected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks as oa_checks

from tests.conftest import API_KEY, SECRET, token_for
from tests.test_cli import clean_env, free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def live_url(database_url: str) -> Iterator[str]:
    port = free_port()
    env = clean_env(HERALD_DATABASE_URL=database_url, HERALD_SECRET=SECRET,
                    HERALD_API_KEY=API_KEY, HERALD_PORT=str(port), HERALD_NODE="openapi",
                    HERALD_FRAME_RATE="1000")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--log-level",
                             "WARNING"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_http(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


schema = schemathesis.openapi.from_path(str(ROOT / "docs" / "openapi.yaml"))


@schema.auth()
class HeraldAuth:
    """The API key for publishing, a user JWT for everything else. Registered as auth (not
    as plain headers) so schemathesis can still send its deliberately unauthenticated
    negative cases."""

    def get(self, case, context) -> str:
        publish = case.method.upper() == "POST" and case.path == "/api/notifications"
        return API_KEY if publish else token_for("openapi-user")

    def set(self, case, data: str, context) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

SEEN: dict[str, set[int]] = {}  # operation -> status codes answered

CHECKS = [
    schemathesis.checks.not_a_server_error,
    oa_checks.status_code_conformance,
    oa_checks.content_type_conformance,
    oa_checks.response_schema_conformance,
    oa_checks.negative_data_rejection,
]


@schema.parametrize()
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_matches_its_description(case, live_url: str) -> None:
    response = case.call_and_validate(base_url=live_url, checks=CHECKS)
    SEEN.setdefault(f"{case.method.upper()} {case.path}", set()).add(response.status_code)


def test_the_fuzzing_reached_the_success_paths() -> None:
    """Guards against a vacuous pass (say, every request refused with 401)."""
    assert 201 in SEEN["POST /api/notifications"], SEEN
    assert 200 in SEEN["GET /api/notifications"], SEEN
    for kind in ("read", "unread", "archive", "unarchive"):
        assert 200 in SEEN[f"POST /api/notifications/{kind}"], SEEN
    assert any(code in (400, 401) for code in SEEN["POST /api/notifications"]), SEEN
