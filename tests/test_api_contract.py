"""The API answers exactly as its OpenAPI document says: schemathesis, every check (stateful
included), against a real `liverec serve` on a fresh data dir.

Set ``LIVEREC_CONTRACT_EXAMPLES`` for a longer run (default 25 examples per operation, about a
minute on two slow cores), and pass headers every request needs (an API key) to
:func:`run_schemathesis`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .test_e2e_serve import free_port, start_server, stop

pytest.importorskip("schemathesis")

EXAMPLES = int(os.environ.get("LIVEREC_CONTRACT_EXAMPLES", "25"))
SEED = 20261129
LIMIT_S = 420  # the run's wall-clock bound (it takes ~1 minute at 25 examples)

# Every check and phase, and the one operation-level exception with its reason: the repository's
# schemathesis.toml (also what `schemathesis run` reads when started from the repository root).
CONFIG = Path(__file__).resolve().parents[1] / "schemathesis.toml"


def seed(url: str, headers: dict[str, str]) -> None:
    """A small catalog and a few users, so reads of existing ids answer 200 too."""
    items = [{"item_id": f"i{k}", "title": f"Item {k}", "categories": ["A" if k % 2 else "B"]} for k in range(6)]
    assert httpx.post(f"{url}/v1/items", json={"items": items}, headers=headers).status_code == 200
    events = [{"user_id": f"u{u}", "item_id": f"i{(u + k) % 6}", "type": "view", "timestamp": 1000 + k}
              for u in range(3) for k in range(4)]
    assert httpx.post(f"{url}/v1/events", json={"events": events}, headers=headers).status_code == 200


def run_schemathesis(url: str, workdir: Path, headers: dict[str, str] | None = None,
                     examples: int = EXAMPLES) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` with every check and phase (stateful included) against ``url``;
    ``headers`` go with every request (an ``Authorization`` header, say)."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
        "--max-examples", str(examples), "--seed", str(SEED), "--workers", "1",
        "--request-timeout", "30", "--no-color", "--report", "junit", "--report-dir", str(workdir / "report"),
    ]
    for name, value in (headers or {}).items():
        command += ["--header", f"{name}: {value}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=LIMIT_S, cwd=workdir,
                          env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"})


def admin_key(data_dir: Path) -> str:
    """An admin key of the default app made by `liverec keys create` (its last line), with a rate
    limit the run never reaches."""
    made = subprocess.run([sys.executable, "-m", "liverec.cli", "keys", "create", "--data-dir", str(data_dir),
                           "--app", "default", "--scopes", "admin", "--rate", "1000000", "--burst", "1000000"],
                          capture_output=True, text=True, timeout=60, check=True)
    return made.stdout.splitlines()[-1]


def test_api_matches_its_openapi_document(tmp_path):
    # with auth on: every request carries an admin key; schemathesis also sends each operation
    # without it and with a wrong one, and expects 401
    headers = {"Authorization": f"Bearer {admin_key(tmp_path / 'data')}"}
    url = f"http://127.0.0.1:{free_port()}"
    proc = start_server(tmp_path / "data", int(url.rsplit(":", 1)[1]))
    try:
        seed(url, headers)
        operations = sum(
            1 for path in httpx.get(f"{url}/openapi.json").json()["paths"].values() for method in path
            if method in {"get", "put", "post", "delete", "patch"}
        )
        result = run_schemathesis(url, tmp_path, headers)
    finally:
        stop(proc)
    output = result.stdout + result.stderr
    summary = output[output.rfind("SUMMARY"):] if "SUMMARY" in output else output[-4000:]
    assert result.returncode == 0, output[-12000:]
    # the run tested every operation of the document, in every phase, and found nothing
    assert re.search(rf"Tested:\s+{operations}\b", summary), summary
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅ {phase}", summary), summary
    generated = re.search(r"(\d+) generated", summary)
    assert generated and int(generated.group(1)) >= operations * min(EXAMPLES, 10), summary
    assert "failure" not in summary.lower().replace("0 failures", ""), summary
