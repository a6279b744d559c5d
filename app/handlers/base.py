"""Shared behaviour of Herald's JSON endpoints: errors as ``{"error": {code, message}}``
and the caller's identity from a Bearer JWT or the browser's login cookie."""

from __future__ import annotations

import json
from typing import Any

import tornado.web

from app import auth
from app.config import Config
from app.metrics import Metrics
from app.ratelimit import retry_after


class ApiError(tornado.web.HTTPError):
    """Raise to answer with ``status`` and a JSON error body."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, reason=None)
        self.code = code
        self.message = message
        self.headers = headers or {}  # sent with the error (Tornado clears the others)


class JsonHandler(tornado.web.RequestHandler):
    config: Config
    metrics: Metrics

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self._node_header()

    def prepare(self) -> None:
        self._node_header()

    def _node_header(self) -> None:
        # Which node answered: lets operators (and the cluster tests) see the balancing.
        # (Tornado sets default headers before initialize(), and again for an error,
        # hence the getattr.)
        config = getattr(self, "config", None)
        if config is None:
            return
        self.set_header("X-Herald-Node", config.node)
        self._cors_headers(config)

    def _cors_headers(self, config: Config) -> None:
        """CORS for pages of ``HERALD_ALLOWED_ORIGINS`` (<herald-inbox> on the host
        application's pages calls the API from there), errors included so that the page
        can read a 401: origins listed by name with the cookie, ``*`` without it. Other
        origins get no CORS header: their browser reads nothing."""
        origin = self.request.headers.get("Origin")
        self.set_header("Vary", "Origin")
        if not origin:
            return
        if auth.origin_named(origin, config.allowed_origins):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")
        elif auth.origin_listed(origin, config.allowed_origins):
            # "*": any page, with a Bearer token only; never with the cookie, or any site
            # could read a signed-in user's notifications.
            self.set_header("Access-Control-Allow-Origin", "*")
        else:
            return
        self.set_header("Access-Control-Expose-Headers", "Retry-After, X-Herald-Node")

    def options(self, *args: Any) -> None:
        """A CORS preflight: what an allowed origin may send (403 for any other)."""
        origin = self.request.headers.get("Origin")
        if not origin or not auth.origin_listed(origin, self.config.allowed_origins):
            raise ApiError(403, "forbidden_origin", f"origin {origin} is not allowed")
        self.set_header("Access-Control-Allow-Methods", "GET, POST")
        self.set_header("Access-Control-Allow-Headers",
                        "Authorization, Content-Type, Idempotency-Key")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            code, message = exc.code, exc.message
            for name, value in exc.headers.items():
                self.set_header(name, value)
        else:
            code = {404: "not_found", 405: "method_not_allowed"}.get(status_code, "error")
            message = self._reason if status_code < 500 else "internal server error"
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": {"code": code, "message": message}}))

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body)
        except (ValueError, RecursionError):
            raise ApiError(400, "invalid_json", "request body is not valid JSON") from None

    async def current_user_id(self) -> str:
        """The user of a Bearer JWT, else of the login cookie (only from an allowed
        origin, so another site cannot spend the cookie). Raises 401 ``ApiError``, or 429
        when the user has spent its requests (``HERALD_HTTP_RATE``, per node)."""
        token = auth.bearer(self.request.headers.get("Authorization"))
        if token is None:
            token = self.get_cookie(auth.COOKIE_NAME)
            origin = self.request.headers.get("Origin")
            if token and not auth.origin_allowed(
                origin, self.request.host, self.config.allowed_origins, self.request.protocol
            ):
                self.metrics.refused.labels("origin").inc()
                raise ApiError(403, "forbidden_origin", f"origin {origin} is not allowed")
        try:
            user = (await self.config.tokens.check(token)).user
        except auth.AuthError as err:
            self.metrics.refused.labels("token").inc()
            raise ApiError(401, "unauthorized", str(err)) from None
        limiter = self.application.settings.get("user_limiter")
        wait = limiter.take(user) if limiter is not None else 0.0
        if wait:
            self.metrics.refused.labels("rate_limited").inc()
            raise ApiError(429, "rate_limited", "too many requests for this user; retry "
                           "after the number of seconds in Retry-After",
                           {"Retry-After": retry_after(wait)})
        return user


class NotFoundHandler(JsonHandler):
    """Any unknown path: a JSON 404 like every other error."""

    def prepare(self) -> None:
        raise ApiError(404, "not_found", f"no such endpoint: {self.request.path}")
