"""A change is certain only once the server confirmed it: change frames carry a ``ref``,
the server answers ``done`` after the commit, and herald.js keeps each change queued
until then, so one made on a socket that died silently (bytes dropped, connection still
open) is sent again on the next socket instead of being lost. herald.js runs in Node.js
with its real WebSocket, through a TCP proxy that freezes the connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from tests.conftest import insert, token_for
from tests.helpers import call, wait_for
from tests.proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent

# herald.js in Node.js (>= 20, whose WebSocket is the browser's API): events out as JSON
# lines, commands in as JSON lines.
CLIENT_JS = r"""
const fs = require('fs');
const readline = require('readline');
const window = {addEventListener() {}, removeEventListener() {}, navigator: {onLine: true},
                location: {protocol: 'http:', host: 'x'}};
new Function('window', fs.readFileSync(process.argv[1], 'utf8'))(window);
const say = (event) => process.stdout.write(JSON.stringify(event) + '\n');
let closeOnNext = false;
const client = new window.HeraldClient({
  url: process.argv[2], token: process.argv[3], confirmWithinMs: 1500, welcomeWithinMs: 2000,
  onState: (state) => say({state}), onPending: (pending) => say({pending}),
  onNotification: (n) => {
    say({notification: n.id});
    if (closeOnNext) { closeOnNext = false; client.close(); }
  },
  onWelcome: (w) => say({welcome: w.user}),
  onRefused: (change, error) => say({refused: change.type, all: change.all, code: error.code}),
});
readline.createInterface({input: process.stdin}).on('line', (line) => {
  const command = JSON.parse(line);
  if (command.read) say({sent: client.markRead([command.read])});
  if (command.readAll) say({sent: client.markAllRead()});
  if (command.token) {  // setToken closes the socket in flight: none with the old token
    client.setToken(command.token);  // gets through after this answer
    say({tokenSet: true});
  }
  if (command.alternate) {  // two sessions fighting: each socket gets the other's token
    let turn = 0;
    client.setToken(() => command.alternate[turn++ % 2]);
  }
  if (command.closeOnNext) { closeOnNext = true; say({closeArmed: true}); }
  if (command.bad) client._change({type: 'read', ids: []});  // past markRead's check
  if (command.misuse) {
    try { client.markRead(command.misuse); } catch (err) { say({thrown: err.name}); }
  }
  if (command.stop) { client.close(); process.exit(0); }
});
"""


class NodeClient:
    """herald.js running in a Node.js process, driven over its stdin and stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, url: str, token: str) -> "NodeClient":
        proc = await asyncio.create_subprocess_exec(
            "node", "--experimental-websocket", "--no-warnings", "-e", CLIENT_JS,
            str(ROOT / "static" / "herald.js"), url, token,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def _read(self, timeout: float) -> dict[str, Any] | None:
        """The next event (also appended to ``events``), or None if none comes within
        ``timeout`` seconds."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            return None
        assert line, f"herald.js exited; events: {self.events}"
        event = json.loads(line)
        self.events.append(event)
        return event

    async def until(self, wanted: Callable[[dict[str, Any]], bool],
                    timeout: float = 10) -> dict[str, Any]:
        """Read events until one is ``wanted``; fail after ``timeout`` seconds."""
        while True:
            event = await self._read(timeout)
            if event is None:
                raise AssertionError(f"nothing wanted within {timeout} s; "
                                     f"events: {self.events}")
            if wanted(event):
                return event

    async def collect(self, seconds: float) -> None:
        """Read every event that comes within ``seconds`` into ``events``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0 and await self._read(left) is not None:
            pass

    async def command(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def behind_proxy(make_node: Any, user: str) -> AsyncIterator[tuple[NodeClient, TcpProxy]]:
    """herald.js live as ``user`` on a node, through a TCP proxy the test can freeze or
    cut."""
    node = await make_node()
    proxy = TcpProxy.to_port(node.port)
    await proxy.start()
    client = await NodeClient.start(f"ws://127.0.0.1:{proxy.port}/ws", token_for(user))
    try:
        await client.until(lambda e: e.get("state") == "live")
        yield client, proxy
    finally:
        await client.stop()
        await proxy.stop()


async def test_a_connection_attempt_that_hangs_is_given_up(make_node, user) -> None:
    """A connection accepted and then met with silence (no handshake answer, no close:
    a stuck proxy, or Node.js's WebSocket after a close before the answer) does not
    leave the client "reconnecting" for ever: it is given up after welcomeWithinMs."""
    node = await make_node()
    proxy = TcpProxy.to_port(node.port)
    proxy.freeze_new = True
    await proxy.start()
    client = await NodeClient.start(f"ws://127.0.0.1:{proxy.port}/ws", token_for(user))
    try:
        await client.until(lambda e: e.get("state") == "connecting")
        await wait_for(lambda: proxy.relayed() == 1, timeout=5)
        proxy.freeze_new = False
        await client.until(lambda e: e.get("state") == "live", timeout=6)
        assert proxy.relayed() == 2
        assert {"state": "reconnecting"} in client.events
    finally:
        await client.stop()
        await proxy.stop()


async def read_at(sql: Any, row_id: int) -> Any:
    return await sql.fetchval("SELECT read_at FROM herald.notifications WHERE id = $1", row_id)


async def test_a_change_made_on_a_silently_dead_socket_is_kept_and_lands(
        make_node, sql, user) -> None:
    async with behind_proxy(make_node, user) as (client, proxy):
        first = await insert(sql, user, "first")
        await client.until(lambda e: e.get("notification") == first["id"])

        # A healthy socket: the change waits for its "done", then nothing waits.
        await client.command(read=first["id"])
        await client.until(lambda e: e.get("pending") == 1)
        await client.until(lambda e: e.get("pending") == 0)
        assert await read_at(sql, first["id"]) is not None

        second = await insert(sql, user, "second")
        await client.until(lambda e: e.get("notification") == second["id"])
        for link in proxy.links():
            link.frozen = True  # the network drops everything; nobody closes anything
        proxy.refuse_new = True  # (until it is checked that the change did not land)
        before = len(client.events)
        await client.command(read=second["id"])
        assert (await client.until(lambda e: "sent" in e))["sent"] is True  # written out
        assert {"pending": 1} in client.events[before:]  # and waiting for its "done"
        await asyncio.sleep(0.8)
        assert await read_at(sql, second["id"]) is None  # it never reached the server
        proxy.refuse_new = False

        # No "done" within confirmWithinMs: the socket is dropped, a new one (the proxy
        # lets new connections through) is welcomed, and the change is sent again.
        await client.until(lambda e: e.get("state") == "reconnecting", timeout=5)
        await client.until(lambda e: e.get("state") == "live", timeout=10)
        await client.until(lambda e: e.get("pending") == 0, timeout=5)
        assert await read_at(sql, second["id"]) is not None


async def test_a_change_the_server_refuses_is_dropped_not_retried_forever(
        make_node, sql, user) -> None:
    """markRead checks its ids; a malformed change that gets past it anyway closes the
    socket once (4400), is dropped, and the changes after it still land."""
    node = await make_node()
    client = await NodeClient.start(f"ws://127.0.0.1:{node.port}/ws", token_for(user))
    try:
        await client.until(lambda e: e.get("state") == "live")
        await client.command(misuse=[])
        assert (await client.until(lambda e: "thrown" in e))["thrown"] == "TypeError"
        await client.command(misuse=["101"])
        assert (await client.until(lambda e: "thrown" in e))["thrown"] == "TypeError"
        row = await insert(sql, user, "one")
        await client.until(lambda e: e.get("notification") == row["id"])
        before = len(client.events)
        await client.command(bad=True)
        await client.command(read=row["id"])
        await client.until(lambda e: e.get("state") == "reconnecting")
        await client.until(lambda e: e.get("pending") == 0, timeout=10)
        assert await read_at(sql, row["id"]) is not None
        await client.collect(2)  # no reconnect loop: one welcome after the refusal
        assert sum(1 for e in client.events[before:] if "welcome" in e) == 1
    finally:
        await client.stop()


async def test_another_users_session_starts_without_the_previous_users_cursor_or_changes(
        make_node, sql, user) -> None:
    """The tab's user changes (setToken with someone else's token, or a login cookie of
    another user): the previous user's cursor would skip the new user's notifications
    with lower seqs, and their waiting "mark all read" would read the new user's inbox.
    Both are dropped: the new user gets every undelivered notification, nothing of
    theirs is changed, and onRefused hears of the dropped change."""
    other = f"{user}-next"
    async with behind_proxy(make_node, user) as (client, proxy):
        mine = [await insert(sql, user, f"mine {i}") for i in range(3)]
        await client.until(lambda e: e.get("notification") == mine[-1]["id"])
        theirs = await insert(sql, other, "theirs")  # seq 1: below the cursor (3)
        assert theirs["seq"] < mine[-1]["seq"]

        proxy.refuse_new = True
        proxy.cut_all()
        await client.until(lambda e: e.get("state") == "reconnecting")
        await client.command(readAll=True)
        assert (await client.until(lambda e: "sent" in e))["sent"] is False  # queued
        await client.command(token=token_for(other))
        await client.until(lambda e: "tokenSet" in e)
        before = len(client.events)
        proxy.refuse_new = False

        assert (await client.until(lambda e: "refused" in e, timeout=10)) == {
            "refused": "read", "all": True, "code": "other_user"}
        await client.until(lambda e: e.get("notification") == theirs["id"], timeout=10)
        welcomes = [e["welcome"] for e in client.events[before:] if "welcome" in e]
        assert welcomes == [other]  # the socket that came with the old cursor is not shown
        assert client.events[-1] == {"notification": theirs["id"]}
        assert {"pending": 0} in client.events[before:]  # the dropped change waits no more
        assert await read_at(sql, theirs["id"]) is None
        for row in mine:
            assert await read_at(sql, row["id"]) is None


async def test_a_token_that_keeps_naming_another_user_does_not_reconnect_in_a_loop(
        make_node, sql, user) -> None:
    """The first switch to another user reconnects at once; a token that names another
    user on every socket (two sessions fighting over one client) backs off instead of
    reconnecting every few milliseconds."""
    async with behind_proxy(make_node, user) as (client, proxy):
        before = proxy.relayed()
        await client.command(alternate=[token_for(f"{user}-a"), token_for(f"{user}-b")])
        await asyncio.sleep(4)
        sockets = proxy.relayed() - before
        assert 2 <= sockets <= 8, sockets  # at once (< 250 ms) it would be dozens


async def test_close_ends_delivery_even_inside_a_batched_message(
        make_node, sql, user) -> None:
    """The page closes the client from onNotification (a sign-out, a user switch) while
    the same server message holds more notifications (a reconnect's catch-up comes as
    one batched message): none of them reaches the page."""
    async with behind_proxy(make_node, user) as (client, proxy):
        proxy.refuse_new = True
        proxy.cut_all()
        await client.until(lambda e: e.get("state") == "reconnecting")
        rows = [await insert(sql, user, f"n{i}") for i in range(5)]
        await client.command(closeOnNext=True)
        await client.until(lambda e: "closeArmed" in e)
        proxy.refuse_new = False
        await client.until(lambda e: e.get("notification") == rows[0]["id"])
        await client.until(lambda e: e.get("state") == "offline")
        await asyncio.sleep(0.5)
        await client.command(stop=True)
        assert client.proc.stdout is not None
        rest = [json.loads(line) for line in (await client.proc.stdout.read()).split()]
        delivered = [e["notification"] for e in client.events + rest if "notification" in e]
        assert delivered == [rows[0]["id"]]


async def test_done_answers_a_change_with_a_ref(make_node, clients, sql, user) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    row = await insert(sql, user, "one")
    await client.notifications(1)
    await client.send({"type": "read", "ids": [row["id"]], "ref": 7})
    await client.send({"type": "read", "ids": [row["id"]], "ref": 8})  # already read
    await client.send({"type": "read", "ids": [row["id"]]})  # no ref: no answer
    await client.send({"type": "unread", "ids": [row["id"]], "ref": 2**53 - 1})
    dones = []
    while len(dones) < 3:
        frame = await client.recv()
        assert frame is not None
        if frame["type"] == "done":
            dones.append(frame)
    assert dones == [{"type": "done", "ref": 7, "changed": 1},
                     {"type": "done", "ref": 8, "changed": 0},
                     {"type": "done", "ref": 2**53 - 1, "changed": 1}]
    assert await read_at(sql, row["id"]) is None  # the unread came last


@pytest.mark.parametrize("ref", [-1, 2**53, 1.5, "7", True, None])
async def test_a_bad_ref_is_malformed(make_node, clients, user, ref) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.send({"type": "read", "ids": [1], "ref": ref})
    code, frames = await client.closed()
    assert code == 4400 and frames[-1]["code"] == "malformed"


async def test_http_changes_take_no_ref(make_node, user) -> None:
    node = await make_node()
    code, body = await call(node.port, "POST", "/api/notifications/read",
                            token=token_for(user), body={"ids": [1], "ref": 1})
    assert code == 400 and body["error"]["code"] == "invalid_request"


# The client's queue alone, on a scripted socket: what the server answers is chosen here.
QUEUE_JS = r"""
const fs = require('fs');
const sent = [];
class ScriptedSocket {
  constructor(url) { this.readyState = 1; ScriptedSocket.last = this; }
  send(data) { sent.push(JSON.parse(data)); }
  close() {}
}
ScriptedSocket.OPEN = 1;
global.WebSocket = ScriptedSocket;
const window = {addEventListener() {}, removeEventListener() {}, navigator: {onLine: true},
                location: {protocol: 'http:', host: 'x'}};
new Function('window', fs.readFileSync(process.argv[1], 'utf8'))(window);
const client = new window.HeraldClient({token: null});
const server = (frame) => ScriptedSocket.last.onmessage({data: JSON.stringify(frame)});
setTimeout(() => {
  ScriptedSocket.last.onopen();
  server({type: 'welcome', user: 'a', node: 'n', last_seq: 0, unread: 0});
  client.markRead([5]);
  client.markUnread([5]);
  client.archive([6]);
  server({type: 'done', ref: 1, changed: 1});  // read: done
  server({type: 'error', code: 'unavailable', message: 'retry', ref: 2});  // unread: not
  setTimeout(() => {  // the retry, after RETRY_CHANGE_MS
    const changes = sent.filter((f) => f.ref).map((f) => f.type + ':' + f.ref);
    process.stdout.write(JSON.stringify({changes, pending: client.pending()}));
    process.exit(0);
  }, 1200);
}, 20);
"""


@pytest.mark.unit
def test_a_change_refused_for_now_goes_back_with_every_later_one_in_order() -> None:
    """An "unavailable" answer to change 2 sends 2 and everything sent after it (3)
    again, in order, so the last change stays the last."""
    result = subprocess.run(["node", "-e", QUEUE_JS, str(ROOT / "static" / "herald.js")],
                            capture_output=True, text=True, check=True, timeout=30)
    outcome = json.loads(result.stdout)
    assert outcome["changes"] == ["read:1", "unread:2", "archive:3", "unread:2", "archive:3"]
    assert outcome["pending"] == 2
