"""Engine creation and schema migration for the metadata store.

SQLite gets WAL, a busy timeout and foreign keys, so several local processes (CLI,
supervisor, replicas, learner) can share one file. Migrations run on start; concurrent
starters serialise on a file lock (SQLite) or an advisory lock (PostgreSQL).

Alembic is imported only when the schema is behind: every process opens the store, and
importing Alembic (~0.1 s) is a tenth of a replica's start-up. ``_at_head`` answers the
common case by reading the stamped revision with one query and the head from the
revision scripts' own ``revision``/``down_revision`` lines (``ast``, no imports);
anything it does not recognise takes Alembic's path.
"""

from __future__ import annotations

import ast
import fcntl
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from stratum.errors import ConfigError, StoreUnavailableError

if TYPE_CHECKING:
    from alembic.config import Config

_MIGRATIONS = Path(__file__).with_name("migrations")
_PG_LOCK_KEY = 0x57A7_0001


@contextmanager
def answering(what: str) -> Iterator[None]:
    """Turn a database that does not answer (PostgreSQL restarting, a cut connection, a
    SQLite lock held past the busy timeout) into ``StoreUnavailableError``: a 503 the
    client retries, and what long-running loops catch and wait out, instead of a driver
    traceback that kills them."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        if not _unavailable(exc):
            raise
        raise StoreUnavailableError(
            f"{what}: the metadata database does not answer "
            f"({type(exc.orig).__name__ if exc.orig else type(exc).__name__})",
            hint="retry in a few seconds") from exc


def session_factory(engine: Engine, what: str) -> Callable[[], AbstractContextManager[Session]]:
    """``sessionmaker`` whose sessions are ``answering(what)``: every store module opens
    its sessions through one, so no caller anywhere sees a driver's connection error."""
    make = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def open_session() -> Iterator[Session]:
        with answering(what), make() as s:
            yield s
    return open_session


def _unavailable(exc: OperationalError | InterfaceError) -> bool:
    """Whether the database is away, not our statement wrong: SQLite raises
    OperationalError for "no such table" too, which is a bug to show, not to retry."""
    if isinstance(exc, InterfaceError) or exc.connection_invalidated:
        return True
    if type(exc.orig).__module__.startswith("sqlite3"):
        text = str(exc.orig).lower()
        return any(s in text for s in ("locked", "unable to open", "disk i/o", "busy"))
    return True  # the driver's OperationalError: connection refused, cut, shutting down


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid metadata URL {url!r}: {exc}") from exc
    # orjson for JSON columns: the request log writes every served input through them.
    kwargs: dict[str, Any] = {"future": True, "json_serializer": _json_dumps}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
    else:
        raise ConfigError(
            f"unsupported metadata URL {url!r}", hint="use sqlite:///PATH or postgresql://..."
        )
    engine = create_engine(parsed, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
                        ).decode()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def script_head() -> str | None:
    """The head revision read from the scripts' text; None when it is not one plain chain
    end (branches, merges, a script it cannot read): then Alembic decides."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (_MIGRATIONS / "versions").glob("*.py"):
        if path.name.startswith("__"):  # as Alembic: __init__.py is no revision
            continue
        found: dict[str, object] = {}
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            return None
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id in ("revision", "down_revision")):
                try:
                    found[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    return None
        rev, down = found.get("revision"), found.get("down_revision", ...)
        if not isinstance(rev, str) or not (down is None or isinstance(down, str)):
            return None
        revisions.add(rev)
        if down is not None:
            parents.add(down)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(engine: Engine) -> bool:
    """True when the database is stamped with the scripts' head (one query, no Alembic)."""
    head = script_head()
    if head is None:
        return False
    try:
        with engine.connect() as conn:
            stamped = [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    except SQLAlchemyError:  # no table yet, or no database: Alembic's path says which
        return False
    return stamped == [head]


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, ":memory:"):
        lock_path = Path(str(engine.url.database) + ".migrate.lock")
        with lock_path.open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    elif engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
    else:
        yield


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; cheap when it already is."""
    try:
        if _at_head(engine):
            return
        from alembic import command

        if current_revision(engine) == head_revision():
            return
        with _migration_lock(engine):
            if current_revision(engine) == head_revision():
                return
            cfg = _alembic_config()
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise ConfigError(
            f"cannot reach the metadata database {engine.url.render_as_string()}: {exc.orig}"
        ) from exc
