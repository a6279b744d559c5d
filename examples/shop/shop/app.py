"""The shop's web application (Tornado): sign-in, the customer's orders with a live
Herald panel, and the admin's "mark shipped".

Signing in mints the customer's Herald token (HS256, ``sub`` = customer id, signed with
the cluster's ``HERALD_SECRET``) and hands it over the way Herald's README recommends: a
``herald_token`` cookie (HttpOnly, SameSite=Lax) on a domain both sites share. On one
machine that is ``127.0.0.1``: browsers do not separate cookies by port, so the panel's
socket to Herald (another port) carries it. Herald must list the shop's origin in
``HERALD_ALLOWED_ORIGINS`` to accept a socket opened from the shop's pages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import tornado.web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.shipping import NotShippable, SimulatedFailure, ship
from shop.tables import customers, orders

HERE = Path(__file__).resolve().parent
ADMIN = "admin"


@dataclass(frozen=True)
class Settings:
    shop_url: str  # the shop's own public address, for the links in notifications
    herald_url: str  # Herald's public address for browsers, e.g. http://127.0.0.1:8080
    herald_secret: str  # HERALD_SECRET of the Herald cluster
    cookie_domain: str | None = None  # e.g. ".shop.example" when on two subdomains
    token_ttl: int = 8 * 3600


def herald_token(settings: Settings, customer_id: str) -> str:
    """A Herald JWT for ``customer_id`` (any JWT library does; this is PyJWT)."""
    now = int(time.time())
    return jwt.encode({"sub": customer_id, "iat": now, "exp": now + settings.token_ttl},
                      settings.herald_secret, algorithm="HS256")


class Base(tornado.web.RequestHandler):
    def initialize(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine, self.settings_ = engine, settings

    def get_current_user(self) -> str | None:
        value = self.get_signed_cookie("shop_user")
        return value.decode() if value else None

    def hand_over_herald_token(self, customer_id: str) -> None:
        self.set_cookie("herald_token", herald_token(self.settings_, customer_id),
                        domain=self.settings_.cookie_domain, httponly=True, samesite="Lax",
                        expires_days=self.settings_.token_ttl / 86400)

    def render_page(self, template: str, **kwargs: Any) -> None:
        self.render(template, herald_url=self.settings_.herald_url,
                    user=self.current_user, **kwargs)


class LoginHandler(Base):
    async def get(self) -> None:
        async with self.engine.connect() as conn:
            people = (await conn.execute(select(customers).order_by(customers.c.id))).all()
        self.render_page("login.html", people=people)

    async def post(self) -> None:
        who = self.get_body_argument("user")
        if who != ADMIN:
            async with self.engine.connect() as conn:
                if (await conn.execute(select(customers.c.id).where(
                        customers.c.id == who))).first() is None:
                    raise tornado.web.HTTPError(400, "no such customer")
            self.hand_over_herald_token(who)
        self.set_signed_cookie("shop_user", who, httponly=True, samesite="Lax")
        self.redirect("/admin" if who == ADMIN else "/")


class LogoutHandler(Base):
    def get(self) -> None:
        self.clear_cookie("shop_user")
        self.clear_cookie("herald_token", domain=self.settings_.cookie_domain)
        self.redirect("/login")


class OrdersHandler(Base):
    """The customer's page: their orders, and the Herald panel."""

    @tornado.web.authenticated
    async def get(self) -> None:
        if self.current_user == ADMIN:
            self.redirect("/admin")
            return
        self.hand_over_herald_token(self.current_user)  # a fresh token on every visit
        async with self.engine.connect() as conn:
            mine = (await conn.execute(select(orders).where(
                orders.c.customer_id == self.current_user).order_by(orders.c.id))).all()
        self.render_page("orders.html", orders=mine)


class OrderHandler(Base):
    """Where a notification's link leads."""

    @tornado.web.authenticated
    async def get(self, order_id: str) -> None:
        async with self.engine.connect() as conn:
            order = (await conn.execute(select(orders).where(
                orders.c.id == int(order_id)))).first()
        if order is None or self.current_user not in (order.customer_id, ADMIN):
            raise tornado.web.HTTPError(404)
        self.render_page("order.html", order=order)


class AdminHandler(Base):
    @tornado.web.authenticated
    async def get(self) -> None:
        if self.current_user != ADMIN:
            raise tornado.web.HTTPError(403)
        async with self.engine.connect() as conn:
            every = (await conn.execute(select(orders).order_by(orders.c.id))).all()
        self.render_page("admin.html", orders=every, shipped=self.get_argument("shipped", ""),
                         failed=self.get_argument("failed", ""))


class ShipHandler(Base):
    @tornado.web.authenticated
    async def post(self, order_id: str) -> None:
        if self.current_user != ADMIN:
            raise tornado.web.HTTPError(403)
        fail = self.get_body_argument("fail", "") == "1"
        try:
            await ship(self.engine, int(order_id), self.settings_.shop_url,
                       fail_after_insert=fail)
        except (NotShippable, SimulatedFailure) as err:
            self.redirect(f"/admin?failed={order_id}&why={tornado.escape.url_escape(str(err))}")
            return
        self.redirect(f"/admin?shipped={order_id}")


def make_app(
    engine: AsyncEngine, settings: Settings, cookie_secret: str
) -> tornado.web.Application:
    common = {"engine": engine, "settings": settings}
    return tornado.web.Application(
        [
            (r"/", OrdersHandler, common),
            (r"/orders/(\d+)", OrderHandler, common),
            (r"/login", LoginHandler, common),
            (r"/logout", LogoutHandler, common),
            (r"/admin", AdminHandler, common),
            (r"/admin/orders/(\d+)/ship", ShipHandler, common),
        ],
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        cookie_secret=cookie_secret,
        login_url="/login",
        xsrf_cookies=True,
    )
