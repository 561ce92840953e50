"""``marginface keys``: scoped API keys in the hashed keys file the server reads."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from service.cli.common import Subcommands, add_common, emit
from service.settings import Settings


def register(sub: Subcommands) -> None:
    """Add the command group."""
    keys = sub.add_parser("keys", help="scoped API keys (hashed keys file)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kcreate = ksub.add_parser("create", help="add a key; prints it once")
    kcreate.add_argument("--id", required=True, help="a name for the key (who uses it)")
    kcreate.add_argument("--scopes", default="read", help="comma list of read,write,admin")
    kcreate.add_argument(
        "--key-stdin",
        action="store_true",
        help="keep a key clients already hold, read from stdin (e.g. a CompreFace API key: "
        "docs/compreface.md), instead of making a new one",
    )
    kcreate.set_defaults(func=cmd_keys_create)
    klist = ksub.add_parser("list", help="key ids and scopes")
    klist.set_defaults(func=cmd_keys_list)
    krevoke = ksub.add_parser("revoke", help="remove a key")
    krevoke.add_argument("id", help="the key's id (marginface keys list shows them)")
    krevoke.set_defaults(func=cmd_keys_revoke)
    kimages = ksub.add_parser("images-key", help="print a new key for privacy.images_key")
    kimages.set_defaults(func=cmd_keys_images_key)
    for p in (kcreate, klist, krevoke):
        p.add_argument(
            "--file", help="keys file (default: MARGINFACE_AUTH__KEYS_FILE or var/keys.json)"
        )
    for p in (kcreate, klist, krevoke, kimages):
        add_common(p, models_dir=False, device=False)


def _keys_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    configured = Settings().auth.keys_file
    if configured is None:
        raise SystemExit("error: MARGINFACE_AUTH__KEYS_FILE is null: no keys file to manage")
    return configured


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Add a scoped key to the keys file; the key is printed once and stored only as sha256."""
    from service.keys import create_key

    path = _keys_file(args)
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    try:
        existing = sys.stdin.readline() if args.key_stdin else None
        key = create_key(path, args.id, scopes, existing=existing)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = path.resolve()
    readers = (
        f"a server started in {Path.cwd()} reads it within a second (the default "
        "MARGINFACE_AUTH__KEYS_FILE=var/keys.json, as scripts/serve.sh runs it)"
        if not args.file and not os.environ.get("MARGINFACE_AUTH__KEYS_FILE")
        else f"a server reads it when its MARGINFACE_AUTH__KEYS_FILE is {where}"
    )
    payload = {
        "id": args.id,
        "scopes": sorted(scopes),
        "key": key,
        "file": str(where),
        "read_by": readers,
    }
    emit(
        args,
        payload,
        f"{key}\n(id {args.id}, scopes {','.join(sorted(scopes))}, in {where}; shown once, "
        f"only its sha256 is stored)\n{readers}",
    )
    return 0


def cmd_keys_images_key(args: argparse.Namespace) -> int:
    """Print a new key for privacy.images_key (encrypts kept photos at rest)."""
    from service.images import new_key

    key = new_key()
    emit(args, {"images_key": key}, key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """Key ids and scopes (never the keys)."""
    from service.keys import read_keys_file

    path = _keys_file(args)
    entries = read_keys_file(path) if path.exists() else []
    rows = [
        {"id": e["id"], "scopes": e["scopes"], "created_at": e.get("created_at")} for e in entries
    ]
    emit(
        args,
        {"file": str(path), "keys": rows},
        "\n".join(f"{r['id']}: {','.join(r['scopes'])}" for r in rows) or "no keys",
    )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Remove a key; a running service stops accepting it within a second."""
    from service.keys import revoke_key

    removed = revoke_key(_keys_file(args), args.id)
    emit(
        args,
        {"id": args.id, "revoked": removed},
        f"revoked {args.id}" if removed else f"no key with id {args.id}",
    )
    return 0 if removed else 2
