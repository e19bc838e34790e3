"""CLI commands of the real-time feedback loop: ``ope``, ``simulate``, ``replay``, ``learn``.

Registered on the main ``liverec`` app by :func:`register` (``liverec.cli`` finds this module).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

DataDirOpt = typer.Option(Path("data"), "--data-dir", help="Data directory of the service (store, impressions, models).")


def _write(out: Optional[Path], result: dict) -> None:
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    typer.echo(text)


def ope(
    data_dir: Path = DataDirOpt,
    store: Optional[str] = typer.Option(None, "--store", help="Store URL (default sqlite:///DATA_DIR/liverec.db); on PostgreSQL the impressions are read from it too."),
    app_id: str = typer.Option("default", "--app", help="App (tenant) id."),
    policies: str = typer.Option("logging,greedy,uniform,softmax:0.1", help="Comma-separated target policies: logging, greedy, uniform, softmax:T, shadow (the distribution logged beside the chosen one: explore_shadow)."),
    window: Optional[float] = typer.Option(None, help="Reward window in seconds (default: the app's reward_window_s)."),
    log: Optional[Path] = typer.Option(None, "--log", exists=True, dir_okay=False, help="Evaluate an exported decision log (JSON lines) instead of the data dir."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the confidence intervals."),
    alpha: float = typer.Option(0.05, help="1 - confidence level."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON result here too."),
) -> None:
    """Off-policy evaluation of exploration-slot policies: IPS, SNIPS and doubly robust (cross-fitted
    reward model) with bootstrap and normal CIs, and the slate pseudo-inverse estimate per response."""
    from .config import Settings
    from .evaluation.ope import decisions_from_log, evaluate, read_decisions_jsonl
    from .ranking import load_settings, open_impressions
    from .store import open_store

    if log is not None:
        decisions = read_decisions_jsonl(log)
    else:
        settings = Settings(data_dir=data_dir, **({"store_url": store} if store else {}))
        url = settings.store_url_resolved()
        path = Path(data_dir) / "impressions.db"
        if url.startswith("sqlite") and not path.exists():
            typer.echo(f"no impression log at {path}: serve recommendations with exploration first", err=True)
            raise typer.Exit(2)
        window_s = window if window is not None else load_settings().for_app(app_id).reward_window_s
        imp_log = open_impressions(url, data_dir)
        store = open_store(url)
        try:
            impressions = list(imp_log.scan(app_id))
            events = [e for _, e in store.events.scan(app_id)]
            decisions = decisions_from_log(impressions, events, window_s, now=time.time(), types=settings.types())
        finally:
            imp_log.close()
            store.close()
    if not decisions:
        typer.echo("no logged exploration decisions with a known reward yet", err=True)
        raise typer.Exit(2)
    result = evaluate(decisions, [p.strip() for p in policies.split(",") if p.strip()], bootstrap, alpha, seed)
    _write(out, result)


def simulate(
    url: str = typer.Option(..., "--url", help="Base URL of a running `liverec serve`, e.g. http://127.0.0.1:8000"),
    out: Path = typer.Option(Path("sim.json"), "--out", help="Where to write the JSON report."),
    data: Optional[Path] = typer.Option(None, "--data", exists=True, file_okay=False, help="ML-1M folder: catalog, fitted tastes and background history (default: a synthetic catalog)."),
    history_events: int = typer.Option(100_000, help="ML-1M ratings (first by time) posted as background history."),
    users: int = typer.Option(60, help="Simulated users per cohort (exploration on / off)."),
    steps: int = typer.Option(24, help="Slates each user reacts to."),
    shift_at: int = typer.Option(12, help="Step at which tastes shift."),
    seed: int = typer.Option(0, help="Seed of tastes, aversions and behaviour."),
    diversity: Optional[float] = typer.Option(None, help="Pass this `diversity` (0..1) with every recommendation request."),
    mode: str = typer.Option("slate", help="slate: users react to a whole slate, then ask again; feed: the app asks again after every event."),
    shift: str = typer.Option("swap", help="swap: favourite and least liked category trade places; user: the taste of another fitted user."),
    app_id: Optional[str] = typer.Option(None, "--app", help="App to simulate in (default: a fresh sim-<seed>-<time> app)."),
    timeout: float = typer.Option(30.0, help="HTTP timeout in seconds."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="API key sent as a bearer token (a server that requires keys)."),
) -> None:
    """Simulated users with hidden tastes click, like, skip, dislike and block over HTTP."""
    from .client import Client
    from .evaluation.simulate import SimConfig, run, synthetic_world, world_from_movielens

    if mode not in ("slate", "feed"):
        raise typer.BadParameter(f"--mode {mode!r}: expected slate or feed")
    if shift not in ("swap", "user"):
        raise typer.BadParameter(f"--shift {shift!r}: expected swap or user")
    world = world_from_movielens(data, history_events, seed) if data else synthetic_world(seed=seed)
    cfg = SimConfig(users=users, steps=steps, shift_at=shift_at, seed=seed, diversity=diversity, mode=mode, shift=shift)
    app_name = app_id or f"sim-{seed}-{int(time.time())}"
    with Client(url, api_key=api_key, timeout=timeout) as client:
        report = run(client, world, cfg, app_name)
    report["world"] = "ml-1m" if data else "synthetic"
    report["url"] = url
    _write(out, report)


replay_app = typer.Typer(help="Prequential replay of a dataset: online learning vs frozen vs rtrec.", no_args_is_help=True)


@replay_app.command("movielens")
def replay_movielens(
    path: Path = typer.Argument(..., exists=True, file_okay=False, help="ML-1M folder (ratings.dat, movies.dat)."),
    out: Path = typer.Option(Path("replay.json"), "--out", help="JSON summary; the plot is written beside it (.png)."),
    train_frac: float = typer.Option(0.8, help="Share of the events (by time) that trains the model; the rest is the replay window."),
    max_events: Optional[int] = typer.Option(None, help="Replay only the first N window events (documented in the output)."),
    user_stride: int = typer.Option(1, help="Replay only the window events of every k-th user."),
    cadence: int = typer.Option(1000, help="Window events between online updates."),
    steps: int = typer.Option(60, help="Fine-tuning steps per online update (with --recent windows)."),
    lr: float = typer.Option(1e-3, help="Learning rate of the online updates."),
    recent: str = typer.Option("events", help="events: one example per new event; windows: the acting users' newest windows."),
    passes: float = typer.Option(3.0, help="With --recent events: passes over the new events per update."),
    replay_ratio: float = typer.Option(0.25, help="Share of each fine-tuning batch replayed from the training period."),
    bias_lr: float = typer.Option(0.03, help="Online: per-event SGD rate of the output bias between updates (0: off)."),
    updates: bool = typer.Option(True, "--updates/--no-updates", help="Online: fine-tuning updates every --cadence events."),
    carry_max: int = typer.Option(10_000, help="Online: events an update did not learn from (held out, or rejected) join the next one, up to this many (0: dropped)."),
    significance: float = typer.Option(0.0, help="Guard rail: a validation drop beyond the tolerance blocks an update only if also significant at this z (paired over the held-out events; 0: the tolerance alone)."),
    warmup_steps: int = typer.Option(0, help="Online: the fine-tuning learning rate rises linearly over the learner's first N steps (0: full rate at once)."),
    epochs: int = typer.Option(300, help="Most epochs of training-period training (early stopping ends it sooner)."),
    train_budget: float = typer.Option(4000.0, help="Time budget (s) of training-period training."),
    model: Optional[Path] = typer.Option(None, "--model", exists=True, dir_okay=False, help="Start from this training-period model (safetensors) instead of training."),
    save_model: Optional[Path] = typer.Option(None, "--save-model", help="Write the trained training-period model here."),
    rtrec: bool = typer.Option(True, "--rtrec/--no-rtrec", help="Run the rtrec (online SLIM) baseline."),
    device: str = typer.Option("cpu", help="Torch device (cpu, cuda)."),
    seed: int = typer.Option(0),
) -> None:
    """Train on the first 80% of events by time, replay the last 20% prequentially."""
    from .evaluation.replay import ReplayConfig, run_replay, write
    from .learning.finetune import FineTuneConfig

    if recent not in ("events", "windows"):
        raise typer.BadParameter(f"--recent {recent!r}: expected events or windows")
    if not 0.0 < train_frac < 1.0:
        raise typer.BadParameter(f"--train-frac {train_frac}: expected a share strictly between 0 and 1")
    if bias_lr < 0:
        raise typer.BadParameter(f"--bias-lr {bias_lr}: expected a rate >= 0")
    if carry_max < 0:
        raise typer.BadParameter(f"--carry-max {carry_max}: expected a count >= 0")
    if warmup_steps < 0:
        raise typer.BadParameter(f"--warmup-steps {warmup_steps}: expected a count >= 0")
    if significance < 0:
        raise typer.BadParameter(f"--significance {significance}: expected a z value >= 0")
    cfg = ReplayConfig(train_frac=train_frac, max_events=max_events, user_stride=user_stride, cadence=cadence, epochs=epochs,
                       bias_lr=bias_lr, updates=updates, carry_max=carry_max,
                       train_budget_s=train_budget, rtrec=rtrec, device=device, seed=seed, recent=recent, passes=passes,
                       finetune=FineTuneConfig(steps=steps, lr=lr, replay_ratio=replay_ratio, significance=significance,
                                                 warmup_steps=warmup_steps))
    summary = run_replay(path, cfg, out.parent, log=lambda m: typer.echo(m, err=True), model_path=model, save_to=save_model)
    plot = out.with_suffix(".png")
    if summary.get("plot") and Path(summary["plot"]) != plot:
        Path(summary["plot"]).replace(plot)
        summary["plot"] = str(plot)
    write(summary, out)
    typer.echo(json.dumps({k: summary[k] for k in ("online", "frozen", "rtrec", "events", "events_per_second", "online_vs_frozen") if k in summary}, indent=2))


def learn(
    data_dir: Path = DataDirOpt,
    app_id: str = typer.Option("default", "--app", help="App (tenant) id."),
    init: Optional[Path] = typer.Option(None, "--init", exists=True, dir_okay=False, help="Register and promote this model (safetensors from `replay --save-model`) if the app has no promoted model."),
    interval: float = typer.Option(10.0, help="Seconds between update attempts."),
    min_events: int = typer.Option(50, help="Events since the last update before one is tried."),
    steps: int = typer.Option(20, help="Fine-tuning steps per update."),
    bias_lr: float = typer.Option(0.0, envvar="LIVEREC_LEARNER_BIAS_LR", help="Per-event output-bias rate before each update (0: off)."),
    once: bool = typer.Option(False, "--once", help="Catch up with the log, try one update and exit."),
    store_url: Optional[str] = typer.Option(None, "--store", help="Store URL (default sqlite:///DATA_DIR/liverec.db)."),
) -> None:
    """The learner role: follow the shared log and promote fine-tuned versions (a process beside
    `liverec serve`, whose workers' model servers swap them in)."""
    from .catalog import CatalogIndex
    from .config import Settings
    from .evaluation.replay import load_model
    from .learning import LearnerConfig, OnlineLearner, learner_follower
    from .memory import HeapTrimmer
    from .model.registry import ModelRegistry
    from .model.serving import load_scorer
    from .state import StateStore
    from .store import StoreUnavailable, open_store

    settings = Settings(data_dir=data_dir, **({"store_url": store_url} if store_url else {}))
    registry = ModelRegistry.for_data_dir(data_dir, app_id)
    if registry.promoted() is None:
        if init is None:
            typer.echo(f"no promoted model for app {app_id!r} in {registry.root}; train one or pass --init MODEL.safetensors", err=True)
            raise typer.Exit(2)
        from safetensors import safe_open

        with safe_open(str(init), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        if "item_ids" not in meta:
            raise typer.BadParameter(f"{init}: no item_ids in its metadata (write it with `liverec replay ... --save-model`)")
        registry.promote(registry.register(load_model(init), meta["item_ids"], {"source": str(init)}))
    store = open_store(settings.store_url_resolved())
    catalog = CatalogIndex()
    catalog.load(store.catalog.scan(app_id))
    state = StateStore(settings.types(), settings.sequence_length, user_events=store.events.user_events)
    holder = {"scorer": load_scorer(registry, app_id)}
    if bias_lr < 0:
        raise typer.BadParameter(f"--bias-lr {bias_lr}: expected a rate >= 0")
    cfg = LearnerConfig(interval_s=interval, min_events=min_events, bias_lr=bias_lr)
    cfg.finetune.steps = steps
    learner = OnlineLearner(app_id, state, lambda: holder["scorer"], lambda sc: holder.__setitem__("scorer", sc),
                            registry, catalog.get, cfg, position=lambda: follower.position, changes=store.events.changes)
    follower = learner_follower(store, app_id, state, catalog, learner)
    heap = HeapTrimmer(settings.heap_trim_s)  # each update frees a copy of the model and its optimiser
    heap.start()
    try:
        while True:
            try:
                follower.catch_up(force=True)
                result = learner.step()
            except StoreUnavailable as exc:  # PostgreSQL down or restarting: the same step again later
                typer.echo(json.dumps({"store_unavailable": exc.cause}), err=True)
                result = None
            if result is not None:
                typer.echo(json.dumps(result))
            if once:
                break
            time.sleep(interval)
    finally:
        heap.stop()
        store.close()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``liverec`` CLI."""
    app.command("ope")(ope)
    app.command("simulate")(simulate)
    app.add_typer(replay_app, name="replay")
    app.command("learn")(learn)
