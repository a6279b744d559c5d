"""What can go wrong talking to PostgreSQL, in two sets every module shares.

``CONNECTION_ERRORS``: the connection failed (killed, restarted, unreachable, timed out);
the same statement on a fresh connection may succeed, so reads and idempotent writes
retry. ``DB_ERRORS``: any failure of a statement, the database refusing it included;
callers that cannot retry answer 503 / ``unavailable`` or try again later.
"""

from __future__ import annotations

import asyncio

import asyncpg

# Errors after which the same statement on a fresh connection may succeed.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown / terminate_backend
    asyncpg.exceptions.CannotConnectNowError,
    # Raised when a connection died in the middle of a protocol exchange.
    asyncpg.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)

# Any failure of a statement: the connection's, or the database refusing it.
DB_ERRORS: tuple[type[BaseException], ...] = CONNECTION_ERRORS + (asyncpg.PostgresError,)
