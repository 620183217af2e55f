"""The metering subcommands of ``xrouter``: ``db upgrade`` / ``db check`` (schema migrations)
and ``export-episodes`` (training data). They talk to the database directly: they are operator
tools (the chart's migration hook, a training Job), not clients of the service."""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import logging
import os
import pathlib
import sys
from typing import Any

from xrouter.common.errors import InvalidArgument
from xrouter.metering import export, migrate
from xrouter.metering.store import make_engine

URL_VARIABLE = "XROUTER_METERING_DATABASE_URL"


def _url(args: argparse.Namespace, fallback: pathlib.Path | None = None) -> str:
    url = args.url or os.environ.get(URL_VARIABLE, "")
    if not url and fallback is not None and fallback.exists():
        url = f"sqlite:///{fallback}"
    if not url:
        raise SystemExit(f"error: no database: pass --url or set {URL_VARIABLE} "
                         "(e.g. postgresql+psycopg://user@host/db or sqlite:///var/metering.db)")
    return url


def _existing(url: str, args: argparse.Namespace) -> str:
    """``url``, refused when it names a SQLite file that does not exist: the commands that only read
    the ledger must not leave an empty database file behind a typo in its path (SQLite creates one
    on connecting)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - make_engine names a malformed URL itself
        return url
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") \
            and not database.startswith("file:") and not pathlib.Path(database).exists():
        raise InvalidArgument("--url" if args.url else URL_VARIABLE,
                              f"no ledger at {database}: the SQLite file does not exist; "
                              "run `xrouter db upgrade` to create it")
    return url


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Upgrade the ledger schema (idempotent; safe to run from several hook pods at once)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    engine = make_engine(_url(args))
    try:
        before, after = migrate.upgrade(engine, args.revision)
    finally:
        engine.dispose()
    print(f"ledger schema: {before or 'empty'} -> {after}" if before != after else f"ledger schema at {after}")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    """Exit 0 when the schema is at this version's head, 1 (with what to run) otherwise."""
    try:
        url = _existing(_url(args), args)
    except InvalidArgument as error:  # no schema to check: the same status as an empty one
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    engine = make_engine(url)
    try:
        migrate.check(engine)
    except migrate.SchemaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"ledger schema at {migrate.head()}")
    return 0


def _when(text: str) -> dt.datetime:
    """An ISO date or time (UTC unless it says otherwise), or a lookback from now: ``7d``, ``12h``
    (what a CronJob passes, having no shell to compute a date)."""
    unit = {"d": "days", "h": "hours"}.get(text[-1:])
    if unit and text[:-1].isdigit():
        try:
            return dt.datetime.now(dt.timezone.utc) - dt.timedelta(**{unit: int(text[:-1])})
        except (OverflowError, ValueError):  # a lookback past year 1
            raise argparse.ArgumentTypeError(f"{text!r} reaches back before year 1") from None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time, nor a lookback like 7d or 12h: {text!r}") from None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def cmd_export(args: argparse.Namespace) -> int:
    """Write settled requests as episodes (EXPORT.md) to --out, atomically (gzip-compressed when
    --out ends in .gz, which `xrouter learn` reads as gzip)."""
    if args.since is not None and args.until is not None and args.until <= args.since:
        print(f"xrouter export-episodes: --until {args.until.isoformat()} is not after --since "
              f"{args.since.isoformat()}: the window is empty", file=sys.stderr)
        return 2
    engine = make_engine(_existing(_url(args, pathlib.Path(args.home).resolve() / "metering.db"), args))
    out = pathlib.Path(args.out)
    partial = out.with_name(out.name + ".partial")
    filters: dict[str, Any] = dict(since=args.since, until=args.until, tenant=args.tenant,
                                   scored_only=args.scored_only)
    try:
        migrate.check(engine)
        opener = gzip.open if out.suffix == ".gz" else open
        with opener(partial, "wt", encoding="utf-8") as stream:
            written = export.write_jsonl(
                engine, stream, progress=lambda n: print(f"  {n} episodes...", file=sys.stderr, flush=True),
                **filters)
        partial.replace(out)  # a reader never sees half an export
    except migrate.SchemaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        partial.unlink(missing_ok=True)
        engine.dispose()
    print(f"wrote {written} episodes to {out}")
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``db`` and ``export-episodes`` to the ``xrouter`` command's subparsers."""
    db = sub.add_parser("db", help="ledger database schema (migrations)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="upgrade the ledger schema to this version's (default head)")
    upgrade.add_argument("--url", help=f"SQLAlchemy URL of the ledger (default: ${URL_VARIABLE})")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    upgrade.set_defaults(run=cmd_db_upgrade)
    check = db_sub.add_parser("check", help="exit 1 unless the schema is at this version's head")
    check.add_argument("--url", help=f"SQLAlchemy URL of the ledger (default: ${URL_VARIABLE})")
    check.set_defaults(run=cmd_db_check)

    episodes = sub.add_parser("export-episodes", help="write settled requests as training episodes (JSONL)")
    episodes.add_argument("--out", required=True, help="output file (JSON lines, see metering/EXPORT.md)")
    episodes.add_argument("--url", help=f"ledger URL (default: ${URL_VARIABLE}, else the local stack's SQLite)")
    episodes.add_argument("--since", type=_when, help="only requests settled at or after (ISO, UTC; or 7d, 12h: that long ago)")
    episodes.add_argument("--until", type=_when, help="only requests settled before (ISO, UTC)")
    episodes.add_argument("--tenant", default="", help="only this tenant")
    episodes.add_argument("--scored-only", action="store_true", help="only requests with a verifier score or feedback")
    episodes.set_defaults(run=cmd_export)
