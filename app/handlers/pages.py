"""Browser pages: the inbox at ``/`` and, with ``--dev`` only, login, logout and a small
"send a notification" endpoint for trying Herald with two browser windows."""

from __future__ import annotations

import tornado.web

from app import auth
from app.config import Config
from app.handlers.api import NotificationsHandler


class InboxHandler(tornado.web.RequestHandler):
    """``GET /``: the inbox. It authenticates with the login cookie or a token in the URL
    fragment (``/#token=...``, which never reaches the server or its logs)."""

    def initialize(self, config: Config) -> None:
        self.config = config

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        # Scripts only from this origin: injected markup could not run even if it got in.
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
            "style-src 'self'; frame-ancestors 'none'",
        )

    def get(self) -> None:
        self.render("inbox.html", dev=self.config.dev)


class StaticHandler(tornado.web.StaticFileHandler):
    """``/static/``: herald.js, herald.mjs and <herald-inbox> are public and meant for
    other sites' pages, so any origin may read them (an ES module import needs CORS)."""

    def set_default_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")


class LoginHandler(InboxHandler):
    """``GET/POST /login`` (``--dev`` only): pick any user name, get its login cookie."""

    def get(self) -> None:
        self.render("login.html", error=None)

    def post(self) -> None:
        user = self.get_body_argument("user", "").strip()
        try:
            token = self.config.tokens.mint(user, self.config.token_ttl)
        except ValueError as err:
            self.set_status(400)
            self.render("login.html", error=str(err))
            return
        self.set_cookie(auth.COOKIE_NAME, token, httponly=True, samesite="Lax",
                        secure=self.request.protocol == "https",
                        expires_days=self.config.token_ttl / 86400)
        self.redirect("/")


class LogoutHandler(InboxHandler):
    """``GET /logout`` (``--dev`` only): forget the login cookie."""

    def get(self) -> None:
        self.clear_cookie(auth.COOKIE_NAME)
        self.redirect("/login")


class DevSendHandler(NotificationsHandler):
    """``POST /dev/send`` (``--dev`` only): a signed-in user sends one notification to any
    user from the inbox page, without an API key in the browser. Everything after the
    authorization is the publish API's (validation, errors, metrics, answer)."""

    SUPPORTED_METHODS = ("POST",)

    def max_items(self) -> int:
        return 1

    async def authorize_publish(self) -> None:
        await self.current_user_id()
