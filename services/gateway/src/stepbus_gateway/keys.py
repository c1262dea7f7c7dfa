"""``python -m stepbus_gateway.keys``: make API keys and their entries for the keys file.

Make a new key (first line, give it to the client) and its entry (second line, add it to the
``keys`` list of the file ``STEPBUS_API_KEYS_FILE`` names)::

    $ python -m stepbus_gateway.keys new --tenant acme --roles ops+admin --id ci-bot
    key: 3q2W...
    {"id": "ci-bot", "tenant": "acme", "roles": ["ops", "admin"], "hash": "sha256$..."}

Make the entry of an existing key, read from stdin (one line)::

    $ printf '%s\\n' "$KEY" | python -m stepbus_gateway.keys hash --tenant acme

``--scrypt`` makes a slow scrypt hash instead of one salted SHA-256 (see `stepbus_gateway.auth`
for why SHA-256 is enough for random keys). Without ``--id`` the id is ``key-<8 hex>``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence

from .auth import KeysError, file_entry, hash_key

__all__ = ["hash_key", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stepbus_gateway.keys",
        description="Make stepbus gateway API keys and their keys-file entries.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a random key and print it and its entry")
    hashed = commands.add_parser("hash", help="print the entry of a key read from stdin")
    for command in (new, hashed):
        command.add_argument("--tenant", required=True, help="the tenant the key acts for")
        command.add_argument("--roles", default="", help="roles joined by '+', e.g. ops+admin")
        command.add_argument("--id", dest="entry_id", help="entry id (default: key-<8 hex>)")
        command.add_argument("--scrypt", action="store_true", help="a slow scrypt hash")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Invalid arguments or an invalid key exit with status 2 and a message on stderr that never
    holds the key.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "new":
        key = secrets.token_urlsafe(32)
    else:
        key = sys.stdin.read().strip()
        if not key:
            parser.error("no key on stdin")
    roles = args.roles.split("+") if args.roles else []
    try:
        entry = file_entry(
            key, tenant=args.tenant, roles=roles, entry_id=args.entry_id, scrypt=args.scrypt
        )
    except KeysError as exc:
        parser.error(str(exc))
    if args.command == "new":
        print(f"key: {key}")
    print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
