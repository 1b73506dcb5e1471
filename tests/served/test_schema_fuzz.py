"""Schemathesis against the served OpenAPI schemas: whatever it generates, never a 5xx.

Two schemas: the API routes (FastAPI's `/openapi.json`) and BentoML's (`/docs.json`, whose
own routes are the async-job task endpoints). Generated uploads are random bytes, so requests
end in 4xx quickly. Run through schemathesis' CLI: its pytest plugin does not load on pytest 9.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.served.conftest import Served

pytestmark = pytest.mark.served

EXAMPLES_PER_OPERATION = 25


@pytest.mark.parametrize("schema_path, include", [
    ("/openapi.json", []),
    ("/docs.json", ["--include-path-regex", "jobs"]),
])
def test_generated_requests_never_get_5xx(served: Served, tmp_path: Path, schema_path: str,
                                           include: list[str]) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{served.url}{schema_path}",
         "--url", served.url, "--checks", "not_a_server_error", "--max-examples", str(EXAMPLES_PER_OPERATION),
         "--workers", "2", "--request-timeout", "300", "--generation-deterministic",
         "--suppress-health-check", "all", "--report-json-path", str(report), *include],
        capture_output=True, text=True, timeout=1200,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts and int(counts.group(1)) == int(counts.group(2)) >= 20, output[-3000:]
