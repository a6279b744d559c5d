"""Property-based fuzzing of client frames against a live node (hypothesis): arbitrary
JSON, wrong types, huge numbers, unicode, binary frames, before and after hello. The
node never crashes, answers only within its codes, and never leaks another user's data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator
from urllib.request import urlopen

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from herald_dev.net import free_port
from tests.conftest import SECRET, run_in_thread, token_for
from tests.helpers import clean_env, wait_http

ROOT = Path(__file__).resolve().parent.parent
CLOSE_CODES = {4400, 4401, 4429, 1009}
FRAME_TYPES = {"welcome", "notification", "read", "pong", "error"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=5),
    max_leaves=15,
)
typed_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "ack", "read", "ping", "HELLO", "", "welcome"])},
    optional={"token": json_values, "last_seq": json_values, "seq": json_values,
              "ids": json_values | st.lists(st.integers(), max_size=20), "all": json_values},
)
frames = st.one_of(
    typed_frames.map(lambda f: json.dumps(f)),
    json_values.map(lambda v: json.dumps(v)),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=40).map(lambda n: "[" * n * 1000),  # deep nesting
)


@pytest.fixture(scope="module")
def node_port(database_url: str) -> Iterator[int]:
    async def seed() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("INSERT INTO herald.notifications (user_id, title) VALUES "
                               "('fuzz-alice', 'for alice'), ('fuzz-bob', 'SECRET-BOB')")
        finally:
            await conn.close()

    run_in_thread(seed())
    port = free_port()
    env = clean_env(HERALD_DATABASE_URL=database_url, HERALD_SECRET=SECRET,
                    HERALD_PORT=str(port), HERALD_NODE="fuzz", HERALD_LOG_FORMAT="text")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--log-level",
                             "ERROR"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_http(port)
        yield port
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=15)
        assert "Traceback" not in stderr, stderr[-3000:]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(say_hello=st.booleans(), sequence=st.lists(frames, min_size=1, max_size=4))
def test_fuzzed_frames(node_port: int, say_hello: bool, sequence: list) -> None:
    received: list[dict] = []
    code = None
    with connect(f"ws://127.0.0.1:{node_port}/ws", open_timeout=5,
                 max_size=2**22) as ws:
        try:
            if say_hello:
                ws.send(json.dumps({"type": "hello", "token": token_for("fuzz-alice"),
                                    "last_seq": 0}))
            for frame in sequence:
                ws.send(frame)
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                try:
                    received.append(json.loads(ws.recv(timeout=0.1)))
                except TimeoutError:
                    continue
        except ConnectionClosed:
            pass
        code = ws.close_code
    assert code is None or code in CLOSE_CODES | {1000}, code
    for frame in received:
        assert frame["type"] in FRAME_TYPES, frame
        assert "SECRET-BOB" not in json.dumps(frame)
        if frame["type"] == "welcome":
            assert frame["user"] == "fuzz-alice"
    with urlopen(f"http://127.0.0.1:{node_port}/healthz", timeout=5) as response:
        assert response.status == 200
