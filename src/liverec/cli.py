"""The ``liverec`` command line."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer
from rich.console import Console

from .config import Settings

if TYPE_CHECKING:
    from .store import Store

app = typer.Typer(help="liverec: real-time, feedback-aware recommendations.", no_args_is_help=True, add_completion=False)
import_app = typer.Typer(help="Import data into a data dir (while no server runs on it).", no_args_is_help=True)
app.add_typer(import_app, name="import")
console = Console(stderr=True)

DataDir = typer.Option(Path("data"), "--data-dir", help="Data directory (embedded store, models, caches).")
AppOpt = typer.Option("default", "--app", help="App (tenant) id.")
StoreOpt = typer.Option(None, "--store", help="Store URL (default sqlite:///DATA_DIR/liverec.db).")


def _settings(data_dir: Path, store: Optional[str] = None, **extra) -> Settings:
    values = {"data_dir": data_dir, **extra}
    if store:
        values["store_url"] = store
    return Settings(**values)


def _serve(settings: Settings, progress: bool = True) -> None:
    import uvicorn

    from .api.app import create_app

    api = create_app(settings, progress=progress)
    uvicorn.run(api, host=settings.host, port=settings.port, log_level="warning", access_log=False)


@app.command()
def serve(
    data_dir: Path = DataDir,
    host: str = typer.Option("127.0.0.1", help="Bind address."),
    port: int = typer.Option(8000, help="Port."),
    store: Optional[str] = StoreOpt,
) -> None:
    """Run the HTTP service (API at /v1, docs at /docs)."""
    settings = _settings(data_dir, store, host=host, port=port)
    console.print(f"liverec serving {settings.store_url_resolved()} on http://{host}:{port}")
    _serve(settings)


@contextmanager
def _import_into(data_dir: Path, store: Optional[str]) -> Iterator[tuple[Settings, "Store"]]:
    """The store an import writes to; validation failures exit with code 2 and the field errors."""
    from .events import EventValidationError
    from .store import open_store

    settings = _settings(data_dir, store)
    opened = open_store(settings.store_url_resolved())
    try:
        yield settings, opened
    except EventValidationError as exc:
        console.print(f"[red]rejected:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        opened.close()


@import_app.command("movielens")
def import_movielens_cmd(
    path: Path = typer.Argument(..., exists=True, file_okay=False, help="MovieLens folder (ML-1M/10M or ML-latest/20M/25M layout)."),
    data_dir: Path = DataDir,
    app_id: str = AppOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Import MovieLens ratings (and tags) as events, movies as items."""
    from .importers import import_movielens

    with _import_into(data_dir, store) as (_, target):
        report = import_movielens(target, path, app=app_id)
    typer.echo(json.dumps(report.to_dict()))


@import_app.command("events")
def import_events_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Events as .jsonl or .csv (optionally .gz)."),
    data_dir: Path = DataDir,
    app_id: str = AppOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Import generic events (every row validated; a bad row aborts with its line number)."""
    from .importers import import_events

    with _import_into(data_dir, store) as (settings, target):
        report = import_events(target, file, app=app_id, rules=settings.event_rules())
    typer.echo(json.dumps(report.to_dict()))


@import_app.command("items")
def import_items_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Items as .jsonl or .csv (optionally .gz)."),
    data_dir: Path = DataDir,
    app_id: str = AppOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Import generic items (item_id, title, text, categories, attributes)."""
    from .importers import import_items

    with _import_into(data_dir, store) as (_, target):
        report = import_items(target, file, app=app_id)
    typer.echo(json.dumps(report.to_dict()))


@app.command()
def demo(
    data_dir: Path = typer.Option(Path("demo-data"), "--data-dir", help="Where the demo store lives."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    items: int = typer.Option(3000, help="Catalog size."),
    users: int = typer.Option(400, help="Simulated users."),
) -> None:
    """Generate a demo catalog and users (first run), then serve them and print the URL."""
    from .demo import DemoConfig, load_demo
    from .store import open_store

    settings = _settings(data_dir, host=host, port=port)
    s = open_store(settings.store_url_resolved())
    try:
        if s.events.count() == 0:
            console.print("generating the demo catalog and simulated users ...")
            counts = load_demo(s, DemoConfig(items=items, users=users))
            console.print(f"demo data: {counts['items']} items, {counts['events']} events")
    finally:
        s.close()
    console.print(f"[bold green]liverec demo:[/bold green] open http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    typer.echo(f"http://{host}:{port}/", file=sys.stdout)
    _serve(settings)


def _register_optional() -> None:
    """Commands that live beside their subsystems register themselves here."""
    for module in ("liverec.cli_model", "liverec.cli_realtime"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)


_register_optional()


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":
    main()
