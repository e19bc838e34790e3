"""``liverec keys create | list | revoke``: API keys per app, with scopes and a rate limit.

The store's key role holds the records (a keyed hash of each key, never the key), so a key made
here is known at once to every worker of every machine that serves the store.
"""

from __future__ import annotations

import datetime
import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:
    from .auth import Keyring
    from .auth.keys import SecretSource
    from .config import Settings

keys_app = typer.Typer(help="API keys: one app each, scopes ingest / read / admin, a rate limit.", no_args_is_help=True)
console = Console(stderr=True)

DataDir = typer.Option(Path("data"), "--data-dir", help="Data directory (the embedded store, auth.secret).")
StoreOpt = typer.Option(None, "--store", help="Store URL (default sqlite:///DATA_DIR/liverec.db).")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


@contextmanager
def _keyring(data_dir: Path, store: Optional[str]) -> Iterator[tuple["Settings", "Keyring", "SecretSource"]]:
    from .auth import AuthConfigError, Keyring, SecretSource
    from .config import Settings
    from .store import open_store

    settings = Settings(data_dir=data_dir, **({"store_url": store} if store else {}))
    opened = open_store(settings.store_url_resolved())
    secret = SecretSource(settings.auth_secret, settings.data_dir)
    try:
        yield settings, Keyring(opened.keys, opened.snapshots, secret), secret
    except (AuthConfigError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        opened.close()


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@keys_app.command("create")
def create(
    data_dir: Path = DataDir,
    store: Optional[str] = StoreOpt,
    app_id: str = typer.Option(..., "--app", help="The app (tenant) the key reads and writes; it cannot reach another."),
    scopes: str = typer.Option(..., "--scopes", help="Comma-separated: ingest (events, items), read (recommendations, "
                                                     "similar, items, a user), admin (everything, deletion, stats)."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Sustained requests per second (default LIVEREC_KEY_RATE)."),
    burst: Optional[float] = typer.Option(None, "--burst", help="Requests at once after an idle spell (default LIVEREC_KEY_BURST)."),
) -> None:
    """Create a key and print it once, alone on the last line of stdout (only a hash is stored)."""
    with _keyring(data_dir, store) as (settings, keyring, secret):
        key, record = keyring.create(app_id, scopes, settings.key_rate if rate is None else rate,
                                     settings.key_burst if burst is None else burst, ensure_secret=secret.ensure)
        console.print(f"created key {record.key_id} for app {record.app!r}: scopes {','.join(record.scopes)}, "
                      f"{record.rate:g} requests/s, burst {record.burst:g}. It is shown once; store it now.",
                      highlight=False)
    typer.echo(key)


@keys_app.command("list")
def list_keys(
    data_dir: Path = DataDir,
    store: Optional[str] = StoreOpt,
    app_id: Optional[str] = typer.Option(None, "--app", help="Only this app's keys."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per key."),
) -> None:
    """The keys (no secrets): id, app, scopes, rate limit, created, last used (to the minute), revoked."""
    with _keyring(data_dir, store) as (_, keyring, _secret):
        records = keyring.list(app_id)
    if as_json:
        for r in records:
            typer.echo(json.dumps({"key_id": r.key_id, "app": r.app, "scopes": list(r.scopes), "rate": r.rate,
                                   "burst": r.burst, "created_at": r.created_at, "last_used_at": r.last_used_at,
                                   "revoked_at": r.revoked_at}))
        return
    rows = [("ID", "APP", "SCOPES", "RATE/S", "BURST", "CREATED", "LAST USED", "REVOKED")]
    rows += [(r.key_id, r.app, ",".join(r.scopes), f"{r.rate:g}", f"{r.burst:g}", _when(r.created_at),
              _when(r.last_used_at), _when(r.revoked_at)) for r in records]
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (as `liverec keys list` shows it)."),
    data_dir: Path = DataDir,
    store: Optional[str] = StoreOpt,
) -> None:
    """Revoke a key: every worker refuses it from its next request on (401)."""
    with _keyring(data_dir, store) as (_, keyring, _secret):
        if not keyring.revoke(key_id):
            console.print(f"[red]error:[/red] no key {key_id!r}")
            raise typer.Exit(1)
    console.print(f"revoked key {key_id}", highlight=False)
