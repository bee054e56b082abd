"""How a database failure leaves the storage layer: as one `StorageError` that says what failed.

Every store method wraps its statements in `storage_errors(...)`, so the message format (what we were
doing, then the driver's first line), the `permanent` rule and the `__cause__` are written once and a
caller never has to know SQLAlchemy's exception tree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from moderation.exceptions import ModerationError


class StorageError(ModerationError):
    """The database refused or could not run a statement; the driver's exception is the __cause__.

    `permanent`: the database rejected the data itself (a data or integrity error), so the same
    statement will fail again however often it is retried; otherwise (connection lost, timeout, lock)
    a retry may succeed.
    """

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def describe(exc: BaseException) -> str:
    """The driver's message, without the SQL and parameters SQLAlchemy appends (they can be huge)."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0] if lines else ''}"


@contextmanager
def storage_errors(
    failure: str,
    *,
    rejections_are_permanent: bool = False,
    catch: tuple[type[Exception], ...] = (SQLAlchemyError,),
    detail: Callable[[BaseException], str] = describe,
) -> Iterator[None]:
    """Raise `StorageError(f"{failure}: {detail(exc)}")` from any `catch` error raised inside the block.

    `rejections_are_permanent`: mark data and integrity errors permanent (writes whose caller decides
    between retrying and setting the data aside). `catch` and `detail` let the migrations, which also
    meet Alembic's errors and report them whole, share the wrapping.
    """
    try:
        yield
    except catch as exc:
        permanent = rejections_are_permanent and isinstance(exc, DataError | IntegrityError)
        raise StorageError(f"{failure}: {detail(exc)}", permanent) from exc
