"""The HTTP API: publish (API key), history, read state and preferences (user JWT)."""

from __future__ import annotations

import json

import asyncpg

from app import auth, models, protocol, publish
from app.config import Config
from app.dispatch import Dispatcher
from app.errors import DB_ERRORS
from app.handlers.base import ApiError, JsonHandler
from app.metrics import Metrics
from app.store import NewNotification, Store, TooManyMuted

MAX_HISTORY_PAGE = 200
HISTORY_PARAMETERS = frozenset({"limit", "before_seq", "unread", "archived", "category",
                                "group_key"})


def _single_arg(handler: JsonHandler, name: str) -> str | None:
    values = handler.get_query_arguments(name)
    if len(values) > 1:
        raise ApiError(400, "invalid_request", f"{name} is given more than once")
    return values[0] if values else None


def _bool_arg(handler: JsonHandler, name: str) -> bool:
    raw = (_single_arg(handler, name) or "false").lower()
    if raw not in ("true", "false", "1", "0", ""):
        raise ApiError(400, "invalid_request", f"{name} must be true or false")
    return raw in ("true", "1")


def _int_arg(
    handler: JsonHandler, name: str, default: int | None, low: int, high: int
) -> int | None:
    raw = _single_arg(handler, name)
    if raw is None or raw == "":  # "?limit=&before_seq=" means "the defaults"
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_request", f"{name} must be between {low} and {high}")
    return value


class NotificationsHandler(JsonHandler):
    """``/api/notifications``: POST publishes (API key) one object or a list in one
    transaction; GET pages the caller's history (user JWT), newest first, by seq."""

    def initialize(self, store: Store, config: Config, metrics: Metrics) -> None:
        self.store, self.config, self.metrics = store, config, metrics

    # Notifications one request may publish.
    def max_items(self) -> int:
        return self.config.max_publish_batch

    async def authorize_publish(self) -> None:
        """Publishing takes the API key (raises ``ApiError`` 401 without it)."""
        if not self.config.api_key:
            raise ApiError(
                401, "unauthorized", "publishing over HTTP is disabled: set HERALD_API_KEY"
            )
        if not auth.api_key_ok(
            self.config.api_key, auth.bearer(self.request.headers.get("Authorization"))
        ):
            self.metrics.refused.labels("api_key").inc()
            raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer)")

    async def post(self) -> None:
        """Validate, insert in one transaction, answer: the one publishing path of HTTP."""
        await self.authorize_publish()
        try:
            items = publish.parse_publish(self.request.body, self.max_items(),
                                           self.request.headers.get("Idempotency-Key"))
        except protocol.ProtocolError as err:
            self.metrics.refused.labels("publish_body").inc()
            raise ApiError(400, err.code, err.message) from None
        try:
            inserted = await self.store.insert([NewNotification(**i) for i in items])
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as err:
            # Validation mirrors the constraints, so this is a last line of defence.
            raise ApiError(400, "invalid_request", str(err).splitlines()[0]) from None
        except DB_ERRORS:
            raise ApiError(503, "unavailable", "database unavailable; nothing was inserted "
                           "unless the commit had already completed, retry later") from None
        created = sum(not n.duplicate for n in inserted)
        self.metrics.published.inc(created)
        self.write_json(
            {
                "notifications": [
                    {"id": n.id, "seq": n.seq, "user_id": n.user_id,
                     "created_at": protocol.iso(n.created_at), "duplicate": n.duplicate}
                    for n in inserted
                ]
            },
            # 200 when the whole request was a replay of one already done.
            status=201 if created else 200,
        )

    async def get(self) -> None:
        user = await self.current_user_id()
        unknown = sorted(set(self.request.query_arguments) - HISTORY_PARAMETERS)
        if unknown:  # a typo'd parameter would otherwise silently mean "the default"
            raise ApiError(400, "invalid_request",
                           f"unknown query parameter(s): {', '.join(unknown)[:200]}")
        # Larger pages are clamped, not refused: asking for "a lot" is a fair request.
        limit = min(_int_arg(self, "limit", 50, 1, 10**100) or 50, MAX_HISTORY_PAGE)
        before = _int_arg(self, "before_seq", None, 1, protocol.MAX_SEQ)
        category = _single_arg(self, "category") or None
        if category is not None and len(category) > models.CATEGORY_MAX:
            raise ApiError(400, "invalid_request",
                           f"category must be at most {models.CATEGORY_MAX} characters")
        group_key = _single_arg(self, "group_key") or None
        if group_key is not None and len(group_key) > models.GROUP_KEY_MAX:
            raise ApiError(400, "invalid_request",
                           f"group_key must be at most {models.GROUP_KEY_MAX} characters")
        assert limit is not None
        try:
            page = await self.store.history(
                user, limit, before, _bool_arg(self, "unread"),
                archived=_bool_arg(self, "archived"), category=category, group_key=group_key,
            )
        except DB_ERRORS:
            raise ApiError(503, "unavailable", "database unavailable, retry later") from None
        # The items are JSON text already (store.HISTORY_ITEM): joined, never re-encoded.
        self.set_status(200)
        self.finish(f'{{"notifications":[{",".join(page.items)}],'
                    f'"unread":{page.unread},"last_seq":{page.last_seq},'
                    f'"muted":{json.dumps(list(page.muted), ensure_ascii=False)}}}')


class ChangeHandler(JsonHandler):
    """``POST /api/notifications/{read,unread,archive,unarchive}``: ``{"ids": [...]}``
    (read also takes ``{"all": true}`` or ``{"group_key": "..."}``); ids of other users
    are ignored. Answers
    ``{"updated": n, "unread": n}``; every socket of the user gets the push."""

    def initialize(self, dispatcher: Dispatcher, config: Config, metrics: Metrics,
                   kind: str) -> None:
        self.dispatcher, self.config, self.metrics = dispatcher, config, metrics
        self.kind = kind

    async def post(self) -> None:
        user = await self.current_user_id()
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", 'body must be {"ids": [...]}'
                           + (', {"all": true} or {"group_key": "..."}'
                              if self.kind == "read" else ""))
        try:
            request = protocol.parse_change_request(self.kind, body)
        except protocol.ProtocolError as err:
            raise ApiError(400, "invalid_request", err.message) from None
        try:
            updated = await self.dispatcher.change(user, request)
            unread = await self.dispatcher.unread(user)
        except DB_ERRORS:
            raise ApiError(503, "unavailable", "database unavailable, retry later") from None
        self.write_json({"updated": updated, "unread": unread})


class PreferencesHandler(JsonHandler):
    """``GET /api/preferences``: the caller's muted categories (sorted) and unread count."""

    def initialize(self, dispatcher: Dispatcher, config: Config, metrics: Metrics) -> None:
        self.dispatcher, self.config, self.metrics = dispatcher, config, metrics

    async def get(self) -> None:
        user = await self.current_user_id()
        if self.request.query_arguments:
            raise ApiError(400, "invalid_request", "no query parameters are taken here")
        try:
            prefs = await self.dispatcher.preferences(user)
        except DB_ERRORS:
            raise ApiError(503, "unavailable", "database unavailable, retry later") from None
        self.write_json({"muted": list(prefs.muted), "unread": prefs.unread})


class PreferenceHandler(JsonHandler):
    """``POST /api/preferences/{mute,unmute}`` ``{"category": "..."}``: answers
    ``{"updated": 0|1, "muted": [...], "unread": n}``; every socket of the user gets a
    preferences frame. 409 ``too_many_muted`` past ``models.MUTED_MAX``."""

    def initialize(self, dispatcher: Dispatcher, config: Config, metrics: Metrics,
                   kind: str) -> None:
        self.dispatcher, self.config, self.metrics = dispatcher, config, metrics
        self.kind = kind

    async def post(self) -> None:
        user = await self.current_user_id()
        body = self.json_body()
        if not isinstance(body, dict) or set(body) != {"category"}:
            unknown = sorted(set(body) - {"category"}) if isinstance(body, dict) else []
            raise ApiError(400, "invalid_request", 'body must be {"category": "..."}'
                           + (f"; unknown field(s) {', '.join(unknown)}"[:200] if unknown
                              else ""))
        try:
            category = protocol.parse_category(body["category"])
        except protocol.ProtocolError as err:
            raise ApiError(400, "invalid_request", err.message) from None
        try:
            updated = await self.dispatcher.set_preference(
                user, protocol.Preference(self.kind, category))
            prefs = await self.dispatcher.preferences(user)
        except TooManyMuted:
            raise ApiError(409, "too_many_muted", f"at most {models.MUTED_MAX} muted "
                           "categories; unmute one first") from None
        except DB_ERRORS:
            raise ApiError(503, "unavailable", "database unavailable, retry later") from None
        self.write_json({"updated": updated, "muted": list(prefs.muted),
                         "unread": prefs.unread})
