"""``liverec consume kafka`` (the stream consumer role) and ``liverec sink kafka``.

Registered on the main ``liverec`` app by :func:`register` (``liverec.cli`` finds this module).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)

BootstrapOpt = typer.Option(..., "--bootstrap", help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT].")
ConfigOpt = typer.Option([], "--config", help="A librdkafka property KEY=VALUE (repeatable), e.g. security.protocol=SSL.")
DataDirOpt = typer.Option(Path("data"), "--data-dir", help="Data directory (embedded store).")
StoreOpt = typer.Option(None, "--store", help="Store URL (default sqlite:///DATA_DIR/liverec.db).")


def _settings(data_dir: Path, store: Optional[str]):
    from .config import Settings

    return Settings(data_dir=data_dir, **({"store_url": store} if store else {}))


def _properties(pairs: list[str]) -> dict[str, str]:
    from .streams.kafka import parse_properties

    try:
        return parse_properties(pairs)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _serve_metrics(port: int, totals_fn, lags_fn) -> None:
    """The consumer's own Prometheus endpoint (the API's ``/metrics`` shows the lag too)."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    from .streams.progress import LagCollector

    registry = CollectorRegistry()
    for name, help_ in (("messages", "Messages consumed"), ("events", "Events appended to the log"),
                        ("duplicates", "Redelivered events recognised by event_id"), ("dead_letters", "Messages sent to the dead-letter topic")):
        Gauge(f"liverec_consumer_{name}", help_, registry=registry).set_function(lambda n=name: getattr(totals_fn(), n))

    registry.register(LagCollector(lags_fn))
    start_http_server(port, addr="0.0.0.0", registry=registry)


def consume_kafka(
    bootstrap: str = BootstrapOpt,
    topic: str = typer.Option(..., "--topic", help="Topic of events (one JSON event or {\"events\": [...]} per message)."),
    group: str = typer.Option("liverec", "--group", help="Consumer group: consumers of one group split the partitions."),
    app_id: str = typer.Option("default", "--app", help="App (tenant) of events whose message has no x-liverec-app header."),
    data_dir: Path = DataDirOpt,
    store: Optional[str] = StoreOpt,
    dlq: Optional[str] = typer.Option(None, "--dlq", help="Dead-letter topic (default TOPIC.dlq)."),
    batch: int = typer.Option(5000, "--batch", min=1, max=100_000, help="Messages per transaction and offset commit."),
    max_idle: Optional[float] = typer.Option(None, "--max-idle", min=0, help="Stop after this many seconds without a message."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Serve this consumer's Prometheus metrics on this port."),
    config: list[str] = ConfigOpt,
) -> None:
    """The stream consumer role: append a topic's events to the log, then commit the offsets."""
    from .store import open_store
    from .streams.kafka import KafkaEventSource, SourceConfig
    from .streams.progress import StreamProgress

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    settings = _settings(data_dir, store)
    cfg = SourceConfig(bootstrap=bootstrap, topic=topic, group=group, app=app_id, dlq_topic=dlq, batch=batch,
                       max_idle_s=max_idle, properties=_properties(config))
    log_store = open_store(settings.store_url_resolved())
    started = time.monotonic()
    last = {"t": started, "messages": 0}

    def report(totals) -> None:
        now = time.monotonic()
        if now - last["t"] >= 5:
            rate = (totals.messages - last["messages"]) / (now - last["t"])
            behind = sum(lag.lag for lag in source.lags)
            console.print(f"{totals.messages:,} messages, {totals.events:,} events, {totals.duplicates:,} duplicates, "
                          f"{totals.dead_letters:,} dead letters; {rate:,.0f} msg/s, lag {behind:,}", highlight=False)
            last.update(t=now, messages=totals.messages)

    source = KafkaEventSource(cfg, log_store.events, settings.event_rules(), StreamProgress(log_store.snapshots), on_batch=report)
    source.install_signal_handlers()
    if metrics_port:
        _serve_metrics(metrics_port, lambda: source.totals, lambda: source.lags)
    console.print(f"consuming {topic} (group {group}) from {bootstrap} into {settings.store_url_resolved()}; "
                  f"dead letters to {cfg.dead_letter_topic}")
    try:
        totals = source.run()
    finally:
        log_store.close()
    # last line, one JSON object: what this consumer did (scripts read it)
    typer.echo(f"stopped {json.dumps({**totals.to_dict(), 'seconds': round(time.monotonic() - started, 3)})}", err=True)


def sink_kafka(
    bootstrap: str = BootstrapOpt,
    topic: str = typer.Option("liverec-impressions", "--topic", help="Topic the impressions and rewards go to."),
    data_dir: Path = DataDirOpt,
    store: Optional[str] = StoreOpt,
    app_id: str = typer.Option("default", "--app", help="App whose reward window applies."),
    until_idle: bool = typer.Option(False, "--until-idle", help="Stop once everything due is produced."),
    config: list[str] = ConfigOpt,
) -> None:
    """Produce impressions (with propensities) and their rewards 1 / 0 / 0.5 to a topic."""
    import signal

    from .ranking import load_settings, open_impressions
    from .store import open_store
    from .streams.kafka import ImpressionSink, SinkConfig

    settings = _settings(data_dir, store)
    url = settings.store_url_resolved()
    log_store = open_store(url)
    impressions = open_impressions(url, data_dir)
    window = load_settings(settings.ranking_config).for_app(app_id).reward_window_s
    sink = ImpressionSink(SinkConfig(bootstrap=bootstrap, topic=topic, window_s=window, properties=_properties(config)),
                          impressions, log_store.events, log_store.snapshots, settings.types())
    signal.signal(signal.SIGTERM, sink.stop)
    signal.signal(signal.SIGINT, sink.stop)
    console.print(f"producing impressions and rewards (window {window:g}s) to {topic} on {bootstrap}")
    try:
        produced = sink.run(until_idle=until_idle)
    finally:
        impressions.close()
        log_store.close()
    console.print(f"produced {produced}", highlight=False)


def register(app: typer.Typer) -> None:
    consume_app = typer.Typer(help="Stream consumers: append an event bus's events to the log.", no_args_is_help=True)
    consume_app.command("kafka")(consume_kafka)
    app.add_typer(consume_app, name="consume")
    sink_app = typer.Typer(help="Stream producers: impressions and rewards out to an event bus.", no_args_is_help=True)
    sink_app.command("kafka")(sink_kafka)
    app.add_typer(sink_app, name="sink")
