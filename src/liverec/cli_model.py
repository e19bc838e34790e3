"""``liverec train``, ``liverec evaluate movielens|events`` and ``liverec models list|promote|rollback``.

Registered on the main CLI by :func:`register`.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def _recipe(recipe: Optional[str], epochs: Optional[int], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if recipe:
        text = Path(recipe).read_text() if Path(recipe).exists() else recipe
        try:
            out.update(json.loads(text))
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--recipe {recipe!r}: not JSON (or a JSON file): {exc}") from exc
    if epochs is not None:
        out["epochs"] = epochs
    out.update(extra or {})
    return out


def _threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


NPROC_HELP = ("training processes on this machine (DDP: gloo on CPU, NCCL on GPUs; the global batch "
              "stays the recipe's; each gets cores // N threads, or --threads)")


def _launch(nproc: int, threads: Optional[int], nnodes: int = 1, node_rank: int = 0,
            master_addr: Optional[str] = None, master_port: Optional[int] = None) -> Any:
    from liverec.model.distributed import Launch

    try:
        return Launch(nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
                      master_port=master_port, threads=threads)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _run_evaluation(log: Any, out: Path, seed: int, recipe: dict[str, Any], baselines: bool,
                    text_cache: Optional[Path], model_out: Optional[Path], no_text: bool, launch: Any = None) -> None:
    from liverec.evaluation.offline import evaluate_log
    from liverec.evaluation.report import write_json, write_markdown
    from liverec.model.artifacts import save_artifact

    if no_text:
        recipe["text"] = False
    command = "liverec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report, model = evaluate_log(
        log, recipe, seed=seed, text_cache=text_cache, baselines=baselines, progress=True,
        log_fn=lambda s: console.print(s, highlight=False), command=command, launch=launch,
    )
    write_json(report, out)
    write_markdown(report, out.with_suffix(".md"))
    if model_out is not None:
        save_artifact(model_out, model, [str(i) for i in log.item_ids], {
            "data_fingerprint": log.source_fingerprint, "metrics": report["variants"],
            "train_config": report["train_config"], "validation": report["validation"]})
    v = report["variants"]
    console.print(f"[bold]all items[/bold] NDCG@10 {v['all_items']['NDCG@10']:.4f} HR@10 {v['all_items']['HR@10']:.4f}  "
                  f"[bold]seen filtered[/bold] NDCG@10 {v['seen_filtered']['NDCG@10']:.4f} HR@10 {v['seen_filtered']['HR@10']:.4f}  "
                  f"train {report['train_seconds']:.0f}s -> {out}")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``evaluate`` and ``models`` to the main CLI."""
    evaluate_app = typer.Typer(help="Offline evaluation (leave-one-out, full ranking) with baselines.", no_args_is_help=True)
    app.add_typer(evaluate_app, name="evaluate")
    models_app = typer.Typer(help="Model versions: list, promote, rollback.", no_args_is_help=True)
    app.add_typer(models_app, name="models")

    @evaluate_app.command("movielens")
    def evaluate_movielens(
        path: Path = typer.Argument(..., help="ML-1M directory (ratings.dat [+ movies.dat]) or ratings.dat"),
        out: Path = typer.Option(..., "--out", help="report JSON (a .md summary is written beside it)"),
        seed: int = typer.Option(0, "--seed"),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="override the recipe's epochs"),
        recipe: Optional[str] = typer.Option(None, "--recipe", help="JSON (or JSON file) of recipe overrides"),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
        baselines: bool = typer.Option(True, "--baselines/--no-baselines"),
        no_text: bool = typer.Option(False, "--no-text", help="do not use item text vectors"),
        text_cache: Optional[Path] = typer.Option(None, "--text-cache", help="directory caching text vectors"),
        model_out: Optional[Path] = typer.Option(None, "--model-out", help="also save the trained model here"),
        nproc: int = typer.Option(1, "--nproc", help=NPROC_HELP),
    ) -> None:
        """Run the ML-1M protocol end to end (split, train, evaluate, baselines) and write the report."""
        from liverec.evaluation.protocol import load_movielens

        launch = _launch(nproc, threads)
        _threads(threads)
        if not path.exists():
            raise typer.BadParameter(f"{path}: no such file or directory")
        log = load_movielens(path)
        cache = text_cache or Path(out).parent / ".liverec-text-cache"
        _run_evaluation(log, out, seed, _recipe(recipe, epochs), baselines, cache, model_out, no_text, launch)

    @evaluate_app.command("events")
    def evaluate_events(
        events: Path = typer.Argument(..., help="events CSV: user_id, item_id, timestamp[, type, value, text]"),
        items: Optional[Path] = typer.Option(None, "--items", help="items CSV: item_id, title[, text, categories]"),
        out: Path = typer.Option(..., "--out"),
        seed: int = typer.Option(0, "--seed"),
        epochs: Optional[int] = typer.Option(None, "--epochs"),
        recipe: Optional[str] = typer.Option(None, "--recipe"),
        threads: Optional[int] = typer.Option(None, "--threads"),
        baselines: bool = typer.Option(True, "--baselines/--no-baselines"),
        no_text: bool = typer.Option(False, "--no-text"),
        text_cache: Optional[Path] = typer.Option(None, "--text-cache"),
        model_out: Optional[Path] = typer.Option(None, "--model-out"),
        nproc: int = typer.Option(1, "--nproc", help=NPROC_HELP),
    ) -> None:
        """Run the same protocol on an interaction log in the generic import format."""
        from liverec.evaluation.protocol import load_events_csv

        launch = _launch(nproc, threads)
        _threads(threads)
        try:
            log = load_events_csv(events, items)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        cache = text_cache or Path(out).parent / ".liverec-text-cache"
        _run_evaluation(log, out, seed, _recipe(recipe, epochs), baselines, cache, model_out, no_text, launch)

    _register_train_and_models(app, models_app)


def _register_train_and_models(app: typer.Typer, models_app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        data_dir: Path = typer.Option(Path("data"), "--data-dir", help="the service's data directory"),
        app_id: str = typer.Option("default", "--app"),
        epochs: Optional[int] = typer.Option(None, "--epochs"),
        seed: int = typer.Option(0, "--seed"),
        recipe: Optional[str] = typer.Option(None, "--recipe"),
        threads: Optional[int] = typer.Option(None, "--threads"),
        no_text: bool = typer.Option(False, "--no-text"),
        promote: bool = typer.Option(True, "--promote/--no-promote", help="promote the new version"),
        nproc: int = typer.Option(1, "--nproc", help=NPROC_HELP),
        nnodes: int = typer.Option(1, "--nnodes", help="machines training together (each runs this command)"),
        node_rank: int = typer.Option(0, "--node-rank", help="this machine's place, 0..nnodes-1 (0 registers)"),
        master_addr: Optional[str] = typer.Option(None, "--master-addr", help="node 0's address (several machines)"),
        master_port: Optional[int] = typer.Option(None, "--master-port",
                                                  help="a free port on node 0 (several machines; one: picked)"),
        store_url: Optional[str] = typer.Option(None, "--store", help="Store URL (default sqlite:///DATA_DIR/liverec.db)."),
    ) -> None:
        """Train on what the service holds (its event log + catalog) and register a version."""
        from liverec.model.registry import ModelRegistry
        from liverec.model.service_data import train_from_service

        launch = _launch(nproc, threads, nnodes, node_rank, master_addr, master_port)
        _threads(threads)
        extra = {"text": False} if no_text else {}
        version = train_from_service(data_dir, app_id, _recipe(recipe, epochs, extra), seed=seed,
                                     log_fn=lambda s: console.print(s, highlight=False), launch=launch,
                                     store_url=store_url)
        if version is None:  # another machine of a multi-machine run: node 0 registers
            return
        reg = ModelRegistry.for_data_dir(data_dir, app_id)
        if promote:
            reg.promote(version)
        console.print(f"registered {version}" + (" (promoted)" if promote else ""))
        typer.echo(version)

    @models_app.command("list")
    def models_list(
        data_dir: Path = typer.Option(Path("data"), "--data-dir"),
        app_id: str = typer.Option("default", "--app"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Versions with their metrics (the promoted one marked)."""
        from liverec.model.registry import ModelRegistry

        reg = ModelRegistry.for_data_dir(data_dir, app_id)
        rows = reg.list()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table("version", "promoted", "created", "val NDCG@10", "val HR@10", "events", "items", "deleted users")
        for r in rows:
            m = r.get("metrics", {})
            table.add_row(r["version"], "*" if r["promoted"] else "", r.get("created", ""),
                          f"{m.get('NDCG@10', float('nan')):.4f}", f"{m.get('HR@10', float('nan')):.4f}",
                          str(r.get("events", "")), str(r.get("items", "")), str(r.get("deleted_users") or ""))
        Console().print(table)

    @models_app.command("promote")
    def models_promote(
        version: str = typer.Argument(...),
        data_dir: Path = typer.Option(Path("data"), "--data-dir"),
        app_id: str = typer.Option("default", "--app"),
    ) -> None:
        """Make VERSION the served model (atomic pointer replace)."""
        from liverec.model.registry import ModelRegistry

        try:
            ModelRegistry.for_data_dir(data_dir, app_id).promote(version)
        except KeyError as exc:
            console.print(f"[red]{exc.args[0]}[/red]")
            raise typer.Exit(2) from exc
        typer.echo(f"promoted {version}")

    @models_app.command("rollback")
    def models_rollback(
        data_dir: Path = typer.Option(Path("data"), "--data-dir"),
        app_id: str = typer.Option("default", "--app"),
    ) -> None:
        """Promote the version that was promoted before the current one."""
        from liverec.model.registry import ModelRegistry

        try:
            v = ModelRegistry.for_data_dir(data_dir, app_id).rollback()
        except LookupError as exc:
            console.print(f"[red]{exc.args[0]}[/red]")
            raise typer.Exit(2) from exc
        typer.echo(f"rolled back to {v}")
