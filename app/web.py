"""``make_app``: routes, template and static paths, WebSocket limits. No I/O here."""

from __future__ import annotations

from typing import Any, Callable

import tornado.httputil
import tornado.web

from app import protocol, resources
from app.config import Config
from app.dispatch import Dispatcher
from app.handlers.api import (
    ChangeHandler,
    NotificationsHandler,
    PreferenceHandler,
    PreferencesHandler,
)
from app.handlers.base import NotFoundHandler
from app.handlers.health import HealthzHandler, MetricsHandler, ReadyzHandler
from app.handlers.pages import (
    DevSendHandler,
    InboxHandler,
    LoginHandler,
    LogoutHandler,
    StaticHandler,
)
from app.handlers.ws import SocketHandler
from app.hub import Hub
from app.logs import log_request
from app.metrics import Metrics
from app.proxies import TrustedProxies
from app.ratelimit import KeyedLimiter
from app.store import Store


class HeraldApplication(tornado.web.Application):
    """Tornado's application, which first sets each request's client address and scheme
    from a trusted proxy's headers (app/proxies.py): every handler, the logs and the
    limits then see the client, never a forged header."""

    def __init__(self, proxies: TrustedProxies, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._proxies = proxies

    def find_handler(self, request: tornado.httputil.HTTPServerRequest,
                     **kwargs: Any) -> tornado.web._HandlerDelegate:
        self._proxies.apply(request)
        return super().find_handler(request, **kwargs)


def make_app(
    config: Config,
    dispatcher: Dispatcher,
    store: Store,
    metrics: Metrics,
    bus_connected: Callable[[], bool],
    draining: Callable[[], bool],
    queue_usage: Callable[[], float],
    hub: Hub,
) -> tornado.web.Application:
    common = {"config": config, "metrics": metrics}
    routes: list[tuple[str, type[tornado.web.RequestHandler], dict[str, object]]] = [
        (r"/ws", SocketHandler, {"dispatcher": dispatcher, "hub": hub, **common}),
        (r"/api/notifications", NotificationsHandler, {"store": store, **common}),
        *[(rf"/api/notifications/{kind}", ChangeHandler,
           {"dispatcher": dispatcher, "kind": kind, **common})
          for kind in protocol.CHANGE_KINDS],
        (r"/api/preferences", PreferencesHandler, {"dispatcher": dispatcher, **common}),
        *[(rf"/api/preferences/{kind}", PreferenceHandler,
           {"dispatcher": dispatcher, "kind": kind, **common})
          for kind in protocol.PREFERENCE_KINDS],
        (r"/healthz", HealthzHandler, {"node_name": dispatcher.name}),
        (r"/readyz", ReadyzHandler,
         {"store": store, "bus_connected": bus_connected, "draining": draining,
          "queue_usage": queue_usage, "queue_max": config.notify_queue_max}),
        (r"/metrics", MetricsHandler, {"metrics": metrics}),
        (r"/", InboxHandler, {"config": config}),
    ]
    if config.dev:
        routes += [
            (r"/login", LoginHandler, {"config": config}),
            (r"/logout", LogoutHandler, {"config": config}),
            (r"/dev/send", DevSendHandler, {"store": store, **common}),
        ]
    return HeraldApplication(
        TrustedProxies(config.trusted_proxies),
        routes,
        user_limiter=KeyedLimiter(config.http_rate, config.http_burst),
        template_path=str(resources.folder("templates")),
        static_path=str(resources.folder("static")),
        static_handler_class=StaticHandler,
        websocket_max_message_size=config.max_frame_bytes,
        compress_response=True,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
    )
