"""Schemathesis against the app's own OpenAPI document, on a live server with a real token:
no 500s, responses (including problem+json errors) conform to the documented schemas."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.live import LiveServer
from tests.server.helpers import register


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.timeout(300)
def test_openapi_fuzz_finds_no_500_and_no_schema_violation(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(rate_limit_enabled=False)
    with server.client() as client:
        token = register(client).first.access_token
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [
            str(st),
            "run",
            f"{server.base_url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--no-color",
            "-H",
            f"Authorization: Bearer {token}",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
