"""``xrouter keys create|list|rotate|revoke``: API keys in the ledger. Like ``db``, an operator tool
that talks to the database directly (from a shell with the ledger's URL, e.g. the metering pod);
the service's CreateApiKey / RevokeApiKey RPCs do the same for admin-key holders. A key's secret is
printed once and never stored: the ledger keeps its SHA-256."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from xrouter.common.errors import XRouterError
from xrouter.metering import migrate
from xrouter.metering.commands import URL_VARIABLE, _existing, _url
from xrouter.metering.ledger import Ledger
from xrouter.metering.store import make_engine


def _ledger(args: argparse.Namespace) -> Ledger:
    engine = make_engine(_existing(_url(args, pathlib.Path(args.home).resolve() / "metering.db"), args))
    migrate.check(engine)
    return Ledger(engine, reservation_ttl_s=300)


def _run(args: argparse.Namespace, action: Any) -> int:
    try:
        ledger = _ledger(args)
    except migrate.SchemaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        action(ledger)
    except XRouterError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    finally:
        ledger.engine.dispose()
    return 0


def _show_secret(key_id: str, secret: str, tenant: str, role: str) -> None:
    print(f"key_id  {key_id}\ntenant  {tenant}\nrole    {role}\napi_key {secret}")
    print("(the key is shown only now: the ledger keeps its SHA-256)", file=sys.stderr)


def cmd_create(args: argparse.Namespace) -> int:
    role = "admin" if args.admin else "tenant"

    def create(ledger: Ledger) -> None:
        _show_secret(*ledger.create_api_key(args.tenant, args.label, role), args.tenant, role)
    return _run(args, create)


def cmd_list(args: argparse.Namespace) -> int:
    def show(ledger: Ledger) -> None:
        keys = ledger.list_api_keys(args.tenant, args.all)
        if args.json:
            print(json.dumps([{"key_id": k.key_id, "tenant": k.tenant, "role": k.role, "label": k.label,
                               "created_at": k.created_at.isoformat(),
                               "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in keys]))
            return
        print(f"{'key_id':<22} {'tenant':<24} {'role':<7} {'created (UTC)':<20} {'revoked':<20} label")
        for k in keys:
            revoked = k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-"
            print(f"{k.key_id:<22} {k.tenant:<24} {k.role:<7} {k.created_at:%Y-%m-%d %H:%M:%S}  {revoked:<20} {k.label}")
    return _run(args, show)


def cmd_rotate(args: argparse.Namespace) -> int:
    def rotate(ledger: Ledger) -> None:
        old = next((k for k in ledger.list_api_keys() if k.key_id == args.key_id), None)
        key_id, secret = ledger.rotate_api_key(args.key_id)
        assert old is not None  # rotate_api_key refused a key that is not live
        _show_secret(key_id, secret, old.tenant, old.role)
        print(f"revoked {args.key_id}: routers stop accepting it within XROUTER_ROUTER_KEY_CACHE_S", file=sys.stderr)
    return _run(args, rotate)


def cmd_revoke(args: argparse.Namespace) -> int:
    def revoke(ledger: Ledger) -> None:
        ledger.revoke_api_key(args.key_id)
        print(f"revoked {args.key_id}: routers stop accepting it within XROUTER_ROUTER_KEY_CACHE_S (default 30 s)")
    return _run(args, revoke)


def add_parsers(sub: Any) -> None:
    """Add ``keys`` to the ``xrouter`` command's subparsers."""
    keys = sub.add_parser("keys", help="API keys of the router's faces (stored hashed, shown once)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)

    def command(name: str, help_text: str, run: Any) -> argparse.ArgumentParser:
        parser = keys_sub.add_parser(name, help=help_text)
        parser.add_argument("--url", help=f"ledger URL (default: ${URL_VARIABLE}, else the local stack's SQLite)")
        parser.set_defaults(run=run)
        return parser

    create = command("create", "issue a key for a tenant and print it (once)", cmd_create)
    create.add_argument("--tenant", required=True, help="the tenant the key bills")
    create.add_argument("--label", default="", help="who or what uses the key")
    create.add_argument("--admin", action="store_true",
                        help="an admin key: may act for any tenant it names, load policies, manage budgets")
    listing = command("list", "list keys (never their secrets)", cmd_list)
    listing.add_argument("--tenant", default="", help="only this tenant's keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    rotate = command("rotate", "replace a key by a new one (same tenant, role, label); the old one is revoked",
                     cmd_rotate)
    rotate.add_argument("key_id")
    revoke = command("revoke", "revoke a key by its id", cmd_revoke)
    revoke.add_argument("key_id")
