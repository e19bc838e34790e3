"""The ``liverec`` command line."""

from __future__ import annotations

import json
import os
import sys
import time
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


def _serve(settings: Settings, progress: bool = True, workers: int = 1) -> None:
    from .auth import describe_auth
    from .runtime.workers import serve as serve_workers

    console.print(describe_auth(settings), highlight=False)  # an open service says so
    serve_workers(settings, workers, progress)


@app.command()
def serve(
    data_dir: Path = DataDir,
    host: str = typer.Option("127.0.0.1", help="Bind address."),
    port: int = typer.Option(8000, help="Port."),
    store: Optional[str] = StoreOpt,
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          help="API worker processes, each following the shared log (default LIVEREC_WORKERS, 1)."),
) -> None:
    """Run the HTTP service (API at /v1, docs at /docs)."""
    settings = _settings(data_dir, store, host=host, port=port, **({"workers": workers} if workers else {}))
    console.print(f"liverec serving {settings.store_url_resolved()} on http://{host}:{port} "
                  f"with {settings.workers} worker(s)")
    _serve(settings, workers=settings.workers)


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
    train_budget: Optional[float] = typer.Option(
        None, "--train-budget", min=1.0, help="Most seconds of model training on first start (default 90)."),
) -> None:
    """Generate a demo catalog and users and train a Transformer on them (first run), then serve
    them with the online learner on and print the URL."""
    from .demo import DemoConfig, enable_demo_learner, prepare_demo

    cfg = DemoConfig(items=items, users=users)
    # The settings (and the service built from them) read the learner's environment variables
    # when they are built, so they are set first.
    learner = enable_demo_learner(cfg.app)
    settings = _settings(data_dir, host=host, port=port)
    started = time.perf_counter()
    setup = prepare_demo(settings, cfg, {"time_budget_s": train_budget} if train_budget else None,
                         say=lambda line: console.print(line, highlight=False))
    if setup.trained:
        console.print(f"first start: data and model ready in {time.perf_counter() - started:.0f} s")
    else:
        console.print(f"serving the promoted model {setup.version} (no training needed)")
    if learner["LIVEREC_LEARNER"]:
        console.print(f"online learner on for app(s) {learner['LIVEREC_LEARNER']}, "
                      f"updating every {learner['LIVEREC_LEARNER_INTERVAL']} s as events arrive")
    console.print(f"[bold green]liverec demo:[/bold green] open http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    typer.echo(f"http://{host}:{port}/", file=sys.stdout)
    _serve(settings)


@app.command()
def snapshot(data_dir: Path = DataDir, store: Optional[str] = StoreOpt) -> None:
    """Fold the log (from the stored snapshot, if any) and store a snapshot of the folds now, so
    that the next start folds only what is logged after it (e.g. after an import)."""
    from .runtime.compose import build_service
    from .runtime.snapshots import write_snapshot

    # The folds a snapshot holds do not depend on the scorer; no model is loaded for them.
    settings = _settings(data_dir, store, scorer="cooccurrence", snapshot_interval_s=0)
    service = build_service(settings, watch_models=False)
    try:
        service.start(progress=True)
        result = write_snapshot(service)
    finally:
        service.close()
    typer.echo(json.dumps(result.to_dict()))


def _register_optional() -> None:
    """Commands that live beside their subsystems register themselves here."""
    for module in ("liverec.cli_model", "liverec.cli_realtime", "liverec.cli_streams", "liverec.cli_keys"):
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
