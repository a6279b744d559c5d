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

from herald_dev.net import free_port
from tests.conftest import API_KEY, SECRET, token_for
from tests.helpers import clean_env, wait_http

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

# What each operation must answer at least once while fuzzed: proof that the fuzzing
# reached the success path (not, say, every request refused with 401) and, for publish,
# that the refusals were exercised too.
MUST_ANSWER: dict[str, set[int]] = {
    "POST /api/notifications": {201},
    "GET /api/notifications": {200},
    **{f"POST /api/notifications/{kind}": {200}
       for kind in ("read", "unread", "archive", "unarchive")},
    "GET /api/preferences": {200},
    "POST /api/preferences/mute": {200},
    "POST /api/preferences/unmute": {200},
    "GET /healthz": {200},
    "GET /readyz": {200},
    "GET /metrics": {200},
}
MUST_REFUSE = {"POST /api/notifications": {400, 401}}  # at least one of these

CHECKS = [
    schemathesis.checks.not_a_server_error,
    oa_checks.status_code_conformance,
    oa_checks.content_type_conformance,
    oa_checks.response_schema_conformance,
    oa_checks.negative_data_rejection,
]


@pytest.fixture
def answered() -> Iterator[dict[str, set[int]]]:
    """The status codes one operation's fuzzing got, checked when that test ends: the
    guard against a vacuous pass lives in the same test item, so it holds under `-k`."""
    seen: dict[str, set[int]] = {}
    yield seen
    assert seen, "the fuzzing sent no request at all"
    for operation, codes in seen.items():
        assert MUST_ANSWER[operation] & codes, (operation, sorted(codes))
        if operation in MUST_REFUSE:
            assert MUST_REFUSE[operation] & codes, (operation, sorted(codes))


@schema.parametrize()
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_matches_its_description(case, live_url: str,
                                     answered: dict[str, set[int]]) -> None:
    response = case.call_and_validate(base_url=live_url, checks=CHECKS)
    answered.setdefault(case.operation.label, set()).add(response.status_code)


def test_every_documented_operation_has_an_expectation() -> None:
    """A new route in openapi.yaml must say what its fuzzing has to reach."""
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert labels == set(MUST_ANSWER)
