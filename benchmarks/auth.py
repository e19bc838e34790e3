"""What API keys and rate limits cost a request.

    flock /tmp/liverec-bench.lock .venv/bin/python benchmarks/auth.py [--n 20000] \
        [--redis redis://127.0.0.1:6379/0] [--postgres postgresql://127.0.0.1:5432/test] [--out FILE]

1. The parts, each N times in a loop: ``Keyring.verify`` (one primary-key read of the store's
   key role + one HMAC-SHA256) on SQLite and PostgreSQL, the open-mode check ``Keyring.enabled``
   while no key exists, a token taken from the machine's shared map (``LocalBuckets``) and from
   Redis (``RedisBuckets``, one script round trip).
2. The whole request in process (FastAPI + the app-wide dependency, no socket): ``GET
   /v1/items/{id}`` (a 404: no work behind it, so the difference is the check) open, with a key
   and the local buckets, with a key and Redis; batches alternate so drift hits all alike.

Medians and p99 in microseconds; prints JSON (and writes it with --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from liverec.auth import Keyring, LocalBuckets, RedisBuckets, SecretSource  # noqa: E402
from liverec.config import Settings  # noqa: E402
from liverec.evaluation.report import machine  # noqa: E402
from liverec.store import open_store  # noqa: E402


def timed(fn: Callable[[], object], n: int) -> dict[str, float]:
    """Per-call microseconds of ``fn`` (p50, p99, mean) over ``n`` calls."""
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return {"p50_us": round(samples[len(samples) // 2], 2), "p99_us": round(samples[int(len(samples) * 0.99)], 2),
            "mean_us": round(statistics.fmean(samples), 2), "n": n}


def verify_cost(url: str, n: int) -> dict[str, dict[str, float]]:
    store = open_store(url)
    try:
        keyring = Keyring(store.keys, store.snapshots, secret=lambda: b"s" * 32)
        out = {"enabled_open": timed(keyring.enabled, n)}  # no key yet: one "any key?" read each time
        keys = [keyring.create("bench", "read", 100, 200)[0] for _ in range(20)]
        k = iter(range(10 ** 9))
        out["verify"] = timed(lambda: keyring.verify(keys[next(k) % len(keys)]), n)
        out["verify_unknown"] = timed(lambda: keyring.verify("lrk_0123456789ab_" + "A" * 43), n)
        return out
    finally:
        drop = getattr(store, "drop", None)
        if drop is not None:
            drop()
        store.close()


def local_take_cost(n: int, data_dir: Path) -> dict[str, float]:
    buckets = LocalBuckets(data_dir / "buckets")
    k = iter(range(10 ** 9))
    try:
        return timed(lambda: buckets.take_now(f"key{next(k) % 50}", 1e6, 1e6), n)
    finally:
        buckets.close()


def redis_take_cost(url: str, n: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        buckets = RedisBuckets(url)
        samples = []
        try:
            for i in range(n):
                start = time.perf_counter_ns()
                await buckets.take(f"bench-{i % 50}", 1e6, 1e6)
                samples.append((time.perf_counter_ns() - start) / 1000)
        finally:
            await buckets.aclose()
        samples.sort()
        return {"p50_us": round(samples[len(samples) // 2], 2), "p99_us": round(samples[int(len(samples) * 0.99)], 2),
                "mean_us": round(statistics.fmean(samples), 2), "n": n}

    return asyncio.run(run())


def request_cost(n: int, redis_url: str | None) -> dict[str, dict[str, float]]:
    """In-process requests (ASGI, no socket) of a route with nothing behind it: open, with a key
    and the local buckets, with a key and Redis."""
    import httpx

    from liverec.api.app import create_app

    async def run() -> dict[str, list[float]]:
        modes = {}
        contexts = []
        for mode in ("open", "key_local", "key_redis"):
            if mode == "key_redis" and not redis_url:
                continue
            settings = Settings(data_dir=Path(tempfile.mkdtemp()), scorer="cooccurrence", snapshot_interval_s=0,
                                rate_limit_url=redis_url if mode == "key_redis" else None)
            app = create_app(settings)
            context = app.router.lifespan_context(app)
            await context.__aenter__()
            contexts.append(context)
            headers: dict[str, str] = {}
            if mode != "open":
                key, _ = app.state.auth.keyring.create("default", "read", 1e6, 1e6,
                                                       ensure_secret=SecretSource(None, settings.data_dir).ensure)
                headers = {"Authorization": f"Bearer {key}"}
            modes[mode] = (httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench"), headers)
        samples: dict[str, list[float]] = {mode: [] for mode in modes}
        try:
            for _ in range(20):  # alternate batches: drift on a shared machine hits every mode alike
                for mode, (client, headers) in modes.items():
                    for _ in range(n // 20):
                        start = time.perf_counter_ns()
                        response = await client.get("/v1/items/x", headers=headers)
                        samples[mode].append((time.perf_counter_ns() - start) / 1000)
                        assert response.status_code == 404, response.text
        finally:
            for client, _ in modes.values():
                await client.aclose()
            for context in contexts:
                await context.__aexit__(None, None, None)
        return samples

    out = {}
    for mode, values in asyncio.run(run()).items():
        values.sort()
        out[mode] = {"p50_us": round(values[len(values) // 2], 1), "p99_us": round(values[int(len(values) * 0.99)], 1),
                     "n": len(values)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="Calls per part")
    parser.add_argument("--requests", type=int, default=4_000, help="In-process requests per mode")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL ('' to skip)")
    parser.add_argument("--postgres", default="postgresql://127.0.0.1:5432/test", help="PostgreSQL URL ('' to skip)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    result: dict[str, object] = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    result["sqlite"] = verify_cost(f"sqlite:///{tmp / 'keys.db'}", args.n)
    if args.postgres:
        result["postgresql"] = verify_cost(f"{args.postgres}?schema=bench_{uuid.uuid4().hex[:8]}", args.n // 4)
    result["take_local"] = local_take_cost(args.n, tmp)
    if args.redis:
        result["take_redis"] = redis_take_cost(args.redis, args.n // 4)
    result["request"] = request_cost(args.requests, args.redis or None)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
