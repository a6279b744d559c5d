"""Browser pages: the inbox at ``/`` and, with ``--dev`` only, a login form."""

from __future__ import annotations

import tornado.web

from app import auth
from app.config import Config


class InboxHandler(tornado.web.RequestHandler):
    """``GET /``: the inbox. It authenticates over the WebSocket itself (cookie, or a
    token in the URL fragment, which never reaches the server or its logs)."""

    def initialize(self, config: Config) -> None:
        self.config = config

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.render("inbox.html", dev=self.config.dev)


class LoginHandler(tornado.web.RequestHandler):
    """``GET/POST /login`` (``--dev`` only): pick any user name and get its cookie."""

    def initialize(self, config: Config) -> None:
        self.config = config

    def get(self) -> None:
        self.render("login.html", error=None)

    def post(self) -> None:
        user = self.get_body_argument("user", "").strip()
        try:
            token = auth.mint_token(self.config.secret, user, self.config.token_ttl)
        except ValueError as err:
            self.set_status(400)
            self.render("login.html", error=str(err))
            return
        self.set_cookie(auth.COOKIE_NAME, token, httponly=True, samesite="Lax",
                        expires_days=None)
        self.redirect("/")
