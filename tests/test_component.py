"""<herald-inbox> on a host application's page, served from another origin than Herald
(a real Tornado server on its own port), in Debian's Chromium; and the CORS that makes
that possible, over plain HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.web
from playwright.async_api import Browser, Page, expect

from herald_dev.net import free_port
from tests.browsers import axe_violations, new_page, track_errors
from tests.conftest import token_for
from tests.helpers import wait_for
from tests.proxy import TcpProxy

HOST_PAGE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><title>Host application</title>
<script src="{herald}/static/herald-inbox.js"></script>
<style>
  body {{ font-family: sans-serif; margin: 16px; }}
  .themed {{ --herald-accent: #0a7d38; --herald-on-accent: #ffffff; }}
  .themed::part(bell) {{ border-radius: 50%; }}
  .custom {{ font-style: italic; }}
</style></head>
<body><header><h1>Host application</h1>{element}</header><main><p>Content</p></main>
<script>
  window.events = [];
  window.muted = {{}};  // title -> the herald-notification's detail.muted
  ["herald-notification", "herald-click", "herald-unread", "herald-welcome"].forEach(
    function (name) {{
      document.addEventListener(name, function (e) {{
        var d = e.detail;
        if (name === "herald-notification") window.muted[d.notification.title] = d.muted;
        window.events.push([name, d.notification ? d.notification.title
          : d.unread !== undefined ? d.unread : d.user]);
      }});
    }});
  {script}
</script></body></html>"""


class HostApp:
    """The host application: pages on their own origin (``url``), each loading
    <herald-inbox> from Herald at ``herald``."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        pages = self.pages

        class Page(tornado.web.RequestHandler):
            def get(self, name: str) -> None:
                self.finish(pages[name])

        self.server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/(\w+)", Page)]))
        self.server.listen(self.port, "127.0.0.1")

    def add(self, name: str, herald: str, element: str, lang: str = "en",
            script: str = "") -> str:
        self.pages[name] = HOST_PAGE.format(herald=herald, element=element, lang=lang,
                                            script=script)
        return f"{self.url}/{name}"


@pytest.fixture
async def host() -> AsyncIterator[HostApp]:
    app = HostApp()
    yield app
    app.server.stop()


@pytest.fixture
async def herald(make_node, host) -> Callable[..., Awaitable[Any]]:
    """A Herald node that lets the host application's origin in."""
    async def start(name: str = "node-a") -> Any:
        return await make_node(name, allowed_origins=(host.url,))
    return start


async def insert(sql: Any, user: str, title: str, **columns: Any) -> Any:
    """INSERT one notification as plain SQL with any of its columns (``data`` a dict,
    ``expires_in`` seconds from now); returns the (id, seq) record."""
    expires_in = columns.pop("expires_in", None)
    names = ["user_id", "title", *columns]
    values = [user, title, *columns.values()]
    marks = [f"${i + 1}" + ("::jsonb" if name == "data" else "")
             for i, name in enumerate(names)]
    if expires_in is not None:
        names.append("expires_at")
        marks.append(f"now() + interval '{int(expires_in)} seconds'")
    return await sql.fetchrow(
        f"INSERT INTO herald.notifications ({', '.join(names)}) VALUES ({', '.join(marks)}) "
        "RETURNING id, seq", *values)


def element(user: str, mode: str = "inline", extra: str = "") -> str:
    return (f'<herald-inbox id="inbox" mode="{mode}" token="{token_for(user)}" {extra}>'
            '</herald-inbox>')


async def opened(browser: Browser, url: str, **context: Any) -> Page:
    page = await new_page(browser, **context)
    await page.goto(url)
    await expect(page.locator("#inbox")).to_have_attribute("state", "live")
    return page


async def two_tabs(browser: Browser, urls: list[str]) -> tuple[Page, Page]:
    """Two tabs of one browser (one user), each on its own page (and node)."""
    first = await opened(browser, urls[0])
    second = track_errors(await first.context.new_page())
    await second.goto(urls[1])
    await expect(second.locator("#inbox")).to_have_attribute("state", "live")
    return first, second


async def events(page: Page) -> list[list[Any]]:
    return await page.evaluate("window.events")


def titles(page: Page):
    return page.locator("#inbox #list li .title")



async def refresh_held_back(page: Page) -> tuple[list[Any], asyncio.Event]:
    """Call the element's refresh(): its history page is read from Herald at once but
    reaches the element only once the returned event is set (``window.refreshed`` is
    the promise). The list gets the page's body as soon as Herald answered."""
    answered: list[Any] = []
    release = asyncio.Event()

    async def late(route: Any) -> None:
        response = await route.fetch()
        answered.append(json.loads(await response.text()))
        await release.wait()
        await route.fulfill(response=response)

    await page.route("**/api/notifications?*", late)
    await page.evaluate("window.refreshed = document.getElementById('inbox').refresh(); 0")
    await wait_for(lambda: answered)
    return answered, release


@pytest.mark.browser
async def test_bell_on_another_origin_counts_opens_reads_and_tells_the_host(
    herald, host, browser, sql, user
) -> None:
    node = await herald()
    base = f"http://127.0.0.1:{node.port}"
    page = await opened(browser, host.add("bell", base, element(user, "bell", 'class="themed"')))
    bell, bell_badge = page.locator("#inbox #bell"), page.locator("#inbox #bell-badge")
    await expect(bell).to_have_attribute("aria-label", "Notifications")
    await expect(page.locator("#inbox #panel")).to_be_hidden()

    row = await insert(sql, user, "Your table is ready", body="Table 4")
    await expect(bell_badge).to_have_text("1")
    await expect(bell).to_have_attribute("aria-label", "Notifications, 1 unread")
    await wait_for(lambda: _has(page, ["herald-notification", "Your table is ready"]))
    # The host's theme: a custom property (the badge's colour) and a ::part rule.
    style = await bell.evaluate("b => getComputedStyle(b).borderRadius")
    assert style == "50%"
    colour = await bell_badge.evaluate("b => getComputedStyle(b).backgroundColor")
    assert colour == "rgb(10, 125, 56)"

    await bell.click()
    await expect(page.locator("#inbox #panel")).to_be_visible()
    await expect(bell).to_have_attribute("aria-expanded", "true")
    await expect(titles(page)).to_have_text(["Your table is ready"])
    await expect(page.locator("#inbox #list .item-main")).to_be_focused()
    await page.keyboard.press("Enter")  # keyboard: activate the focused item
    await wait_for(lambda: _has(page, ["herald-click", "Your table is ready"]))
    await expect(bell_badge).to_be_hidden()

    async def read() -> bool:
        return await sql.fetchval("SELECT read_at IS NOT NULL FROM herald.notifications "
                                  "WHERE id = $1", row["id"])
    await wait_for(read)
    # The bell is at the page's left: its panel opens rightwards, all of it on screen.
    box = await page.locator("#inbox #panel").bounding_box()
    assert box is not None and box["x"] >= 0, box
    await page.mouse.click(1200, 650)  # a click outside closes the panel
    await expect(page.locator("#inbox #panel")).to_be_hidden()
    assert page.errors == []  # type: ignore[attr-defined]


async def _has(page: Page, event: list[Any]) -> bool:
    return event in await events(page)


@pytest.mark.browser
async def test_inline_in_french_two_tabs_on_two_nodes_stay_in_step(
    herald, host, browser, sql, user
) -> None:
    node_a, node_b = await herald("node-a"), await herald("node-b")
    urls = [host.add(f"fr{i}", f"http://127.0.0.1:{node.port}", element(user), lang="fr")
            for i, node in enumerate((node_a, node_b))]
    first, second = await two_tabs(browser, urls)
    for page in (first, second):
        await expect(page.locator("#inbox #heading")).to_have_text("Boîte de réception")
        await expect(page.locator("#inbox #status-text")).to_have_text("En direct")
        await expect(page.locator("#inbox #empty-text")).to_have_text("Vous êtes à jour.")

    await insert(sql, user, "Commande expédiée", category="orders")
    await insert(sql, user, "Facture disponible", category="billing")
    for page in (first, second):
        await expect(titles(page)).to_have_text(["Facture disponible", "Commande expédiée"])
        await expect(page.locator("#inbox #badge")).to_have_text("2")
        await expect(page.locator("#inbox #badge")).to_have_attribute(
            "aria-label", "2 notifications non lues")

    item = first.locator("#inbox #list li", has_text="Commande")
    await expect(item.locator(".act-archive")).to_have_text("Archiver")
    await item.locator(".act-archive").click()
    await expect(titles(second)).to_have_text(["Facture disponible"])
    await expect(second.locator("#inbox #badge")).to_have_text("1")
    await second.click("#inbox #view-archived")
    await expect(titles(second)).to_have_text(["Commande expédiée"])
    await second.locator("#inbox .act-unarchive").click()  # "Remettre dans la réception"
    await expect(titles(first)).to_have_text(["Facture disponible", "Commande expédiée"])
    await expect(first.locator("#inbox #badge")).to_have_text("2")

    # Any text can be replaced by the host, by key.
    await first.evaluate("document.getElementById('inbox').strings = {heading: 'Alertes'}")
    await expect(first.locator("#inbox #heading")).to_have_text("Alertes")
    await expect(first.locator("#inbox #status-text")).to_have_text("En direct")
    assert first.errors == [] and second.errors == []  # type: ignore[attr-defined]


@pytest.mark.browser
async def test_changes_wait_offline_and_reach_the_database_when_back(
    herald, host, browser, sql, user
) -> None:
    node = await herald()
    proxy = TcpProxy.to_port(node.port)
    await proxy.start()
    try:
        row = await insert(sql, user, "Read me offline")
        page = await opened(browser, host.add(
            "offline", f"http://127.0.0.1:{proxy.port}", element(user)))
        await expect(titles(page)).to_have_text(["Read me offline"])
        proxy.refuse_new = True
        proxy.cut_all()
        await expect(page.locator("#inbox")).not_to_have_attribute("state", "live")
        await page.locator("#inbox .act-read").click()
        await expect(page.locator("#inbox #pending")).to_have_text("1 change waiting")
        await expect(page.locator("#inbox #retry")).to_be_visible()
        assert await sql.fetchval("SELECT read_at FROM herald.notifications WHERE id = $1",
                                  row["id"]) is None
        proxy.refuse_new = False
        # The element's retryNow() (the button's own action; the button itself may be
        # gone by now if a scheduled attempt is already under way).
        await page.evaluate("document.getElementById('inbox').retryNow()")
        await expect(page.locator("#inbox")).to_have_attribute("state", "live",
                                                               timeout=10_000)
        await expect(page.locator("#inbox #pending")).to_be_hidden()

        async def read() -> bool:
            return await sql.fetchval("SELECT read_at IS NOT NULL FROM herald.notifications "
                                      "WHERE id = $1", row["id"])
        await wait_for(read)
    finally:
        await proxy.stop()


@pytest.mark.browser
async def test_render_hook_and_a_host_that_handles_clicks_itself(
    herald, host, browser, sql, user
) -> None:
    node = await herald()
    script = """
      var inbox = document.getElementById('inbox');
      inbox.renderItem = function (n, content) {
        if (!n.data || !n.data.table) return null;  // the default look
        var mark = document.createElement('span');
        mark.className = 'custom';
        mark.textContent = 'Table ' + n.data.table + ': ' + n.title;
        return mark;
      };
      inbox.addEventListener('herald-click', function (e) {
        e.preventDefault();  // the host routes it itself
        window.routed = e.detail.notification.link;
      });"""
    page = await opened(browser, host.add(
        "hook", f"http://127.0.0.1:{node.port}", element(user), script=script))
    await insert(sql, user, "Plain one", link="https://docs.example/x")
    await insert(sql, user, "Ready", data={"table": 4}, link="/tables/4")
    await expect(page.locator("#inbox #list li .custom")).to_have_text("Table 4: Ready")
    await expect(titles(page)).to_have_text(["Plain one"])  # the other keeps the default
    # A link that leaves the page's site says where to.
    await expect(page.locator("#inbox .link-hint")).to_have_text(["Opens docs.example"])
    await page.locator("#inbox #list li", has_text="Table 4").locator(".item-main").click()
    await wait_for(lambda: page.evaluate("window.routed === '/tables/4'"))
    assert page.url.endswith("/hook")  # the element did not navigate
    await expect(page.locator("#inbox #badge")).to_have_text("1")


@pytest.mark.browser
@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_no_accessibility_violations_bell_and_inline(
    herald, host, browser, sql, user, scheme
) -> None:
    node = await herald()
    base = f"http://127.0.0.1:{node.port}"
    await insert(sql, user, "Unread one", category="orders", link="https://example.com/x")
    read = await insert(sql, user, "Read one", category="billing", expires_in=3600)
    await sql.execute("UPDATE herald.notifications SET read_at = now() WHERE id = $1",
                      read["id"])
    for name, mode in (("a11yinline", "inline"), ("a11ybell", "bell")):
        page = await opened(browser, host.add(name, base, element(user, mode)),
                            color_scheme=scheme)
        if mode == "bell":
            await page.click("#inbox #bell")
        await expect(titles(page)).to_have_count(2)
        await page.click("#inbox #settings-toggle")
        await expect(page.locator("#inbox #settings")).to_be_visible()
        assert await axe_violations(page) == [], (mode, scheme)


async def _fetch(url: str, **kwargs: Any) -> tornado.httpclient.HTTPResponse:
    client = tornado.httpclient.AsyncHTTPClient()
    return await client.fetch(url, raise_error=False, **kwargs)


async def test_cors_lets_allowed_origins_in_and_nobody_else(make_node, user) -> None:
    allowed, other = "http://app.example:3000", "http://evil.example"
    node = await make_node(allowed_origins=(allowed,))
    base = f"http://127.0.0.1:{node.port}"
    preflight = await _fetch(base + "/api/notifications", method="OPTIONS", headers={
        "Origin": allowed, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == allowed
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"

    refused = await _fetch(base + "/api/notifications", method="OPTIONS",
                           headers={"Origin": other, "Access-Control-Request-Method": "GET"})
    assert refused.code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert json.loads(refused.body)["error"]["code"] == "forbidden_origin"

    auth = {"Authorization": f"Bearer {token_for(user)}"}
    page = await _fetch(base + "/api/notifications", headers={"Origin": allowed, **auth})
    assert page.code == 200 and page.headers["Access-Control-Allow-Origin"] == allowed
    # An error too: the page must be able to read a 401 to ask for a fresh token.
    bad = await _fetch(base + "/api/notifications",
                       headers={"Origin": allowed, "Authorization": "Bearer nope"})
    assert bad.code == 401 and bad.headers["Access-Control-Allow-Origin"] == allowed
    foreign = await _fetch(base + "/api/notifications", headers={"Origin": other, **auth})
    assert "Access-Control-Allow-Origin" not in foreign.headers

    script = await _fetch(base + "/static/herald-inbox.js", headers={"Origin": other})
    assert script.code == 200 and script.headers["Access-Control-Allow-Origin"] == "*"
    assert b"customElements.define" in script.body


@pytest.mark.browser
async def test_muting_in_one_tab_quiets_every_tab_and_node(
    herald, host, browser, sql, user
) -> None:
    node_a, node_b = await herald("node-a"), await herald("node-b")
    urls = [host.add(f"mute{i}", f"http://127.0.0.1:{node.port}", element(user))
            for i, node in enumerate((node_a, node_b))]
    first, second = await two_tabs(browser, urls)
    await insert(sql, user, "Order shipped", category="orders")
    await insert(sql, user, "Big sale", category="marketing")
    await expect(second.locator("#inbox #badge")).to_have_text("2")

    await first.click("#inbox #settings-toggle")
    toggle = first.locator('#inbox #mutes [data-category="marketing"]')
    await expect(toggle).to_have_attribute("aria-pressed", "false")
    await toggle.focus()
    await first.keyboard.press("Enter")
    await expect(toggle).to_have_attribute("aria-pressed", "true")

    async def stored() -> bool:
        return await sql.fetchval("SELECT count(*) FROM herald.muted_categories "
                                  "WHERE user_id = $1 AND category = 'marketing'", user) == 1
    await wait_for(stored)
    for page in (first, second):
        await expect(page.locator("#inbox #badge")).to_have_text("1")
        # Still listed under its category, marked muted.
        await expect(toggle).to_be_focused()  # the server's answer did not take focus
        await expect(page.locator("#inbox #list li.muted .title")).to_have_text(["Big sale"])
    await second.click("#inbox #settings-toggle")
    await expect(second.locator('#inbox #mutes [data-category="marketing"]')).to_have_attribute(
        "aria-pressed", "true")

    # A muted arrival: listed, not counted, no announcement; the host is told it is muted.
    await insert(sql, user, "Another sale", category="marketing")
    await expect(titles(second)).to_have_text(["Another sale", "Big sale", "Order shipped"])
    await expect(second.locator("#inbox #live")).not_to_have_text(
        "New notification: Another sale")
    assert ["herald-notification", "Another sale"] in await events(second)
    assert await second.evaluate("[window.muted['Another sale'], window.muted['Big sale']]") \
        == [True, False]
    await expect(second.locator("#inbox #badge")).to_have_text("1")

    # Unmuted from SQL (a backend may): every tab counts them again.
    await sql.execute("DELETE FROM herald.muted_categories WHERE user_id = $1", user)
    for page in (first, second):
        await expect(page.locator("#inbox #badge")).to_have_text("3")
        await expect(page.locator("#inbox #list li.muted")).to_have_count(0)
    assert first.errors == [] and second.errors == []  # type: ignore[attr-defined]


@pytest.mark.browser
async def test_a_mute_beyond_the_limit_is_taken_back_and_signing_out_forgets_the_mutes(
    herald, host, browser, sql, user
) -> None:
    """The server refuses a 101st muted category (too_many_muted): the toggle shown at
    once goes back to unmuted and the panel says why. Signing out leaves no chip and no
    muted category of the user on screen."""
    node = await herald()
    await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                      "SELECT $1, 'c' || g FROM generate_series(1, 100) g", user)
    await insert(sql, user, "Order shipped", category="orders")
    page = await opened(browser, host.add("full", f"http://127.0.0.1:{node.port}",
                                          element(user)))
    await page.click("#inbox #settings-toggle")
    toggle = page.locator('#inbox #mutes [data-category="orders"]')
    await toggle.click()
    error = page.locator("#inbox #settings-error")
    await expect(error).to_have_text(
        "orders was not muted: at most 100 categories can be muted.")
    await expect(error).to_have_attribute("role", "alert")
    await expect(toggle).to_have_attribute("aria-pressed", "false")
    await expect(page.locator("#inbox #list li.muted")).to_have_count(0)
    await expect(page.locator("#inbox #badge")).to_have_text("1")
    assert await sql.fetchval("SELECT count(*) FILTER (WHERE category = 'orders') "
                              "FROM herald.muted_categories WHERE user_id = $1", user) == 0
    await page.locator('#inbox #mutes [data-category="c7"]').click()  # unmuting works
    await expect(error).to_be_hidden()
    await expect(page.locator('#inbox #mutes [data-category="c7"]')).to_have_attribute(
        "aria-pressed", "false")

    await page.evaluate("document.getElementById('inbox').signOut()")
    await expect(page.locator("#inbox")).to_have_attribute("state", "signed-out")
    await expect(page.locator('#inbox #chips [data-category]:not([data-category=""])')) \
        .to_have_count(0)
    await expect(page.locator("#inbox #chips")).to_be_hidden()
    await expect(page.locator("#inbox #mutes [data-category]")).to_have_count(0)
    await expect(titles(page)).to_have_count(0)
    assert page.errors == []  # type: ignore[attr-defined]


@pytest.mark.browser
async def test_a_history_page_read_before_a_mute_does_not_undo_it(
    herald, host, browser, sql, user
) -> None:
    """refresh() reads a page; the user mutes a category before that page arrives: the
    page's (older) muted list must not switch the toggle back."""
    node = await herald()
    await insert(sql, user, "Big sale", category="marketing")
    page = await opened(browser, host.add("stale", f"http://127.0.0.1:{node.port}",
                                          element(user)))
    answered, release = await refresh_held_back(page)  # read now, before the mute
    await page.click("#inbox #settings-toggle")
    toggle = page.locator('#inbox #mutes [data-category="marketing"]')
    await toggle.click()
    await expect(page.locator("#inbox #list li.muted")).to_have_count(1)

    async def stored() -> bool:
        return await sql.fetchval("SELECT count(*) FROM herald.muted_categories "
                                  "WHERE user_id = $1", user) == 1
    await wait_for(stored)
    await expect(page.locator("#inbox #badge")).to_have_text("0")  # the push came
    release.set()
    await page.evaluate("window.refreshed")
    assert answered[0]["muted"] == []  # the page did say "nothing muted"
    await expect(toggle).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#inbox #list li.muted")).to_have_count(1)


@pytest.mark.browser
async def test_a_page_on_its_way_at_sign_out_stays_out_and_the_next_user_starts_unfiltered(
    herald, host, browser, sql, user
) -> None:
    """The user filters on a category and a history page is on its way when they sign
    out: that page must not bring their rows back, and the next user's session starts on
    the whole inbox (their rows are not in the first user's category)."""
    node = await herald()
    await insert(sql, user, "Order shipped", category="orders")
    await insert(sql, user, "Invoice due", category="billing")
    other = f"{user}-next"
    await insert(sql, other, "Welcome aboard", category="account")
    page = await opened(browser, host.add("switch", f"http://127.0.0.1:{node.port}",
                                          element(user)))
    await page.click('#inbox #chips [data-category="orders"]')
    await expect(titles(page)).to_have_text(["Order shipped"])
    answered, release = await refresh_held_back(page)
    await page.evaluate("document.getElementById('inbox').signOut()")
    release.set()
    await page.evaluate("window.refreshed")
    await page.unroute("**/api/notifications?*")
    assert len(answered[0]["notifications"]) == 1  # it held the first user's row
    await expect(titles(page)).to_have_count(0)
    await expect(page.locator("#inbox")).to_have_attribute("state", "signed-out")

    await page.evaluate(f"document.getElementById('inbox').token = '{token_for(other)}'")
    await expect(page.locator("#inbox")).to_have_attribute("state", "live")
    await expect(titles(page)).to_have_text(["Welcome aboard"])
    await expect(page.locator('#inbox #chips [data-category=""]')).to_have_attribute(
        "aria-pressed", "true")
    await expect(page.locator("#inbox #view-inbox")).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#inbox #badge")).to_have_text("1")
    assert page.errors == []  # type: ignore[attr-defined]


@pytest.mark.browser
async def test_a_group_shows_as_one_item_and_reading_it_reads_the_group(
    herald, host, browser, sql, user
) -> None:
    node = await herald()
    for i in range(1, 3):
        await insert(sql, user, f"Comment {i} on PR #12", group_key="pr-12")
    await insert(sql, user, "Build passed")
    page = await opened(browser, host.add("groups", f"http://127.0.0.1:{node.port}",
                                          element(user)))
    await expect(titles(page)).to_have_text(["Build passed", "Comment 2 on PR #12"])
    await insert(sql, user, "Comment 3 on PR #12", group_key="pr-12")  # live, joins it
    await expect(titles(page)).to_have_text(["Comment 3 on PR #12", "Build passed"])
    group = page.locator("#inbox #list li", has_text="PR #12")
    await expect(group.locator(".count")).to_have_text("3 new")
    await expect(page.locator("#inbox #badge")).to_have_text("4")

    await group.locator(".act-read").click()
    await expect(page.locator("#inbox #badge")).to_have_text("1")

    async def group_read() -> bool:
        rows = await sql.fetch("SELECT title, read_at IS NOT NULL AS read "
                               "FROM herald.notifications WHERE user_id = $1 ORDER BY seq",
                               user)
        return [tuple(r) for r in rows] == [
            ("Comment 1 on PR #12", True), ("Comment 2 on PR #12", True),
            ("Build passed", False), ("Comment 3 on PR #12", True)]
    await wait_for(group_read)
    await expect(group.locator(".count")).to_be_hidden()
    # A new comment after the group was read starts a new unread group.
    await insert(sql, user, "Comment 4 on PR #12", group_key="pr-12")
    await expect(titles(page).first).to_have_text("Comment 4 on PR #12")
    await expect(page.locator("#inbox #badge")).to_have_text("2")


@pytest.mark.browser
async def test_readme_snippet_token_set_after_the_tag_and_the_bell_by_keyboard(
    herald, host, browser, sql, user
) -> None:
    """README's three lines (the token set by a script after the tag) make no request
    without it; Escape closes the panel wherever focus went, and tabbing out closes it."""
    node = await herald()
    base = f"http://127.0.0.1:{node.port}"
    html = HOST_PAGE.format(
        herald=base, lang="en", script="",
        element='<herald-inbox id="inbox" mode="bell"></herald-inbox>'
                f'<script>document.querySelector("herald-inbox").token = '
                f'"{token_for(user)}";</script><a href="#x" id="after">After</a>')
    host.pages["readme"] = html
    page = await new_page(browser)
    refused: list[str] = []
    page.on("response", lambda r: refused.append(r.url) if r.status == 401 else None)
    await page.goto(f"{host.url}/readme")
    await expect(page.locator("#inbox")).to_have_attribute("state", "live")
    assert refused == []
    await insert(sql, user, "One")
    await expect(page.locator("#inbox #bell-badge")).to_have_text("1")

    await page.focus("#inbox #bell")
    await page.keyboard.press("Enter")
    await expect(page.locator("#inbox #panel")).to_be_visible()
    await page.locator("#inbox #heading").click()  # not focusable: focus falls to <body>
    await page.keyboard.press("Escape")
    await expect(page.locator("#inbox #panel")).to_be_hidden()
    await expect(page.locator("#inbox #bell")).to_be_focused()

    await page.keyboard.press("Space")
    await expect(page.locator("#inbox #panel")).to_be_visible()
    await page.locator("#inbox .act-archive").focus()  # the panel's last control
    await page.keyboard.press("Tab")
    await expect(page.locator("#after")).to_be_focused()
    await expect(page.locator("#inbox #panel")).to_be_hidden()
    assert page.errors == []  # type: ignore[attr-defined]


@pytest.mark.browser
async def test_mark_all_read_in_a_category_reads_its_rows_beyond_the_loaded_page(
    herald, host, browser, sql, user
) -> None:
    node = await herald()
    await sql.execute("INSERT INTO herald.notifications (user_id, title, category) "
                      "SELECT $1, 'n' || g, CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END "
                      "FROM generate_series(1, 80) g", user)
    page = await opened(browser, host.add("readall", f"http://127.0.0.1:{node.port}",
                                          element(user)))
    await page.click('#inbox #chips [data-category="even"]')
    # One page of the 40, and only evens: a count alone is also true of the unfiltered
    # list still on screen while the filtered one loads.
    await expect(titles(page)).to_have_text([f"n{g}" for g in range(80, 20, -2)])
    await page.click("#inbox #read-all")

    async def only_even_read() -> bool:
        rows = await sql.fetch("SELECT category, count(*) FILTER (WHERE read_at IS NULL) "
                               "AS unread FROM herald.notifications WHERE user_id = $1 "
                               "GROUP BY category ORDER BY category", user)
        return [tuple(r) for r in rows] == [("even", 0), ("odd", 40)]
    await wait_for(only_even_read)
    await expect(page.locator("#inbox #badge")).to_have_text("40")


@pytest.mark.browser
async def test_a_moved_element_works_as_before(herald, host, browser, sql, user) -> None:
    """Moving the element (a re-render re-parents it) takes it down and up again: one
    list, one working bell, not two inboxes on one shadow root."""
    node = await herald()
    await insert(sql, user, "Only once")
    page = await opened(browser, host.add("moved", f"http://127.0.0.1:{node.port}",
                                          element(user, "bell")))
    await page.evaluate("document.querySelector('main').appendChild("
                        "document.getElementById('inbox'))")
    await expect(page.locator("#inbox")).to_have_attribute("state", "live")
    await page.click("#inbox #bell")
    await expect(page.locator("#inbox #panel")).to_be_visible()
    await expect(titles(page)).to_have_text(["Only once"])
    await insert(sql, user, "After the move")
    await expect(titles(page)).to_have_text(["After the move", "Only once"])
    assert page.errors == []  # type: ignore[attr-defined]


async def test_cors_with_any_origin_never_shares_the_cookie(make_node, user) -> None:
    node = await make_node(allowed_origins=("*",))
    base = f"http://127.0.0.1:{node.port}"
    for origin in ("http://anything.example", "null"):
        answer = await _fetch(base + "/api/notifications", headers={
            "Origin": origin, "Authorization": f"Bearer {token_for(user)}"})
        assert answer.code == 200
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in answer.headers


async def test_text_postgresql_cannot_store_is_refused_as_malformed(make_node, user) -> None:
    node = await make_node()
    base = f"http://127.0.0.1:{node.port}"
    auth = {"Authorization": f"Bearer {token_for(user)}"}
    for body in ('{"category": "a\\u0000b"}', '{"category": "\\ud800"}'):
        answer = await _fetch(base + "/api/preferences/mute", method="POST", body=body,
                              headers=auth)
        assert answer.code == 400, (body, answer.code, answer.body)
    answer = await _fetch(base + "/api/notifications/read", method="POST",
                          body='{"group_key": "x\\u0000"}', headers=auth)
    assert answer.code == 400, answer.body
