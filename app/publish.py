"""The HTTP publish body (``POST /api/notifications``, the dev send form, ``herald send``):
validated against the same limits as the table's constraints (``app.models``), so a bad
item is refused with a message naming it before the database sees it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from app import models
from app.protocol import ProtocolError, dumps

PUBLISH_FIELDS = frozenset({"user_id", "title", "body", "data", "link", "idempotency_key",
                            "category", "expires_at", "group_key"})


# The ISO 8601 forms accepted (docs/openapi.yaml has the same pattern): a date, then
# optionally a time to the minute, second or microsecond, then optionally Z or +hh:mm.
TIMESTAMP_PATTERN = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}"
                     r"([.][0-9]{1,6})?)?)?([Zz]|[+-][0-9]{2}:[0-9]{2})?")


def parse_timestamp(value: Any) -> datetime:
    """An ISO 8601 date-time (``Z`` or an offset; none means UTC), as an aware datetime.
    Raises ``ValueError``."""
    if not isinstance(value, str) or not re.fullmatch(TIMESTAMP_PATTERN, value, re.ASCII):
        raise ValueError("not an ISO 8601 date-time")
    text = value
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    # fromisoformat before Python 3.11 takes 3 or 6 fractional digits only.
    text = re.sub(r"[.]([0-9]{1,6})", lambda m: "." + m.group(1).ljust(6, "0"), text)
    moment = datetime.fromisoformat(text.replace("t", "T"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def _publish_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ProtocolError("invalid_request", f"{where} must be an object")
    unknown = sorted(set(item) - PUBLISH_FIELDS)
    if unknown:
        raise ProtocolError("invalid_request", f"{where}: unknown field(s) {', '.join(unknown)}")
    user = item.get("user_id")
    if not models.is_user_id(user):
        raise ProtocolError("invalid_request", f"{where}.user_id must be {models.USER_ID_RULE}")
    title = item.get("title")
    if not isinstance(title, str) or not 1 <= len(title) <= models.TITLE_MAX:
        raise ProtocolError(
            "invalid_request", f"{where}.title must be a string of 1-{models.TITLE_MAX} chars"
        )
    body = item.get("body")
    if body is not None and (not isinstance(body, str) or len(body) > models.BODY_MAX):
        raise ProtocolError(
            "invalid_request", f"{where}.body must be a string of at most {models.BODY_MAX} chars"
        )
    data = item.get("data")
    if data is not None:
        if not isinstance(data, dict):
            raise ProtocolError("invalid_request", f"{where}.data must be a JSON object")
        if len(dumps(data).encode()) > models.DATA_MAX_BYTES:
            raise ProtocolError(
                "invalid_request", f"{where}.data must be at most {models.DATA_MAX_BYTES} bytes"
            )
    link = item.get("link")
    if link is not None and not models.is_link(link):
        raise ProtocolError(
            "invalid_request",
            f"{where}.link must be {models.LINK_RULE}",
        )
    key = item.get("idempotency_key")
    if key is not None and (
        not isinstance(key, str) or not 1 <= len(key) <= models.IDEMPOTENCY_KEY_MAX
    ):
        raise ProtocolError(
            "invalid_request",
            f"{where}.idempotency_key must be a string of 1-{models.IDEMPOTENCY_KEY_MAX} chars",
        )
    category = item.get("category")
    if category is not None and (
        not isinstance(category, str) or not 1 <= len(category) <= models.CATEGORY_MAX
    ):
        raise ProtocolError(
            "invalid_request",
            f"{where}.category must be a string of 1-{models.CATEGORY_MAX} chars",
        )
    group_key = item.get("group_key")
    if group_key is not None and (
        not isinstance(group_key, str) or not 1 <= len(group_key) <= models.GROUP_KEY_MAX
    ):
        raise ProtocolError(
            "invalid_request",
            f"{where}.group_key must be a string of 1-{models.GROUP_KEY_MAX} chars",
        )
    expires_at = item.get("expires_at")
    if expires_at is not None:
        try:
            expires_at = parse_timestamp(expires_at)
        except (ValueError, OverflowError):
            raise ProtocolError(
                "invalid_request",
                f"{where}.expires_at must be an ISO 8601 date-time, e.g. "
                "2026-12-01T18:00:00Z",
            ) from None
    return {"user_id": user, "title": title, "body": body, "data": data, "link": link,
            "idempotency_key": key, "category": category, "expires_at": expires_at,
            "group_key": group_key}


def parse_publish(
    body: bytes, max_batch: int, idempotency_key: str | None = None
) -> list[dict[str, Any]]:
    """Validate a publish request body: one object or a non-empty list of at most
    ``max_batch`` objects. The whole body is rejected if any item is invalid.
    ``idempotency_key`` (the ``Idempotency-Key`` header) applies to a single object."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError("invalid_json", "request body is not valid JSON") from None
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= models.IDEMPOTENCY_KEY_MAX:
        raise ProtocolError("invalid_request", "the Idempotency-Key header must be 1-"
                            f"{models.IDEMPOTENCY_KEY_MAX} characters")
    if isinstance(parsed, dict):
        if idempotency_key is not None:
            if parsed.setdefault("idempotency_key", idempotency_key) != idempotency_key:
                raise ProtocolError("invalid_request", "the Idempotency-Key header and the "
                                    "body's idempotency_key differ")
        return [_publish_item(parsed, "notification")]
    if idempotency_key is not None:
        raise ProtocolError("invalid_request", "the Idempotency-Key header is for a single "
                            "notification; give each list item an idempotency_key")
    if not isinstance(parsed, list) or not parsed:
        raise ProtocolError(
            "invalid_request", "body must be a notification object or a non-empty list of them"
        )
    if len(parsed) > max_batch:
        raise ProtocolError(
            "too_many", f"at most {max_batch} notifications per request (got {len(parsed)})"
        )
    return [_publish_item(item, f"notifications[{i}]") for i, item in enumerate(parsed)]
