"""Schemathesis against the app's own OpenAPI document, on a live server with a real token:
no 500s, responses (including problem+json errors) conform to the documented schemas, the
document is exactly as strict as the server (positive_data_acceptance: no ST202; the operations
and problem codes of rules no schema can state are in schemathesis.toml and
schemathesis_hooks.py), and a 405 lists every method of its path in ``Allow``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.live import LiveServer
from tests.server.helpers import register

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CHECKS = (
    "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance,"
    "positive_data_acceptance,unsupported_method,allow_header_conformance,semantic_rejections_only"
)


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
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{server.base_url}/openapi.json",
            "--checks",
            CHECKS,
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
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.server.schemathesis_hooks",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        },
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_405_allow_lists_every_method_of_the_path(make_server: Callable[..., LiveServer]) -> None:
    """Every route whose path matches is asked, whatever the method (routes that share a template
    with different methods, parameterised paths). Path ids match only real ids (``{x:id}``,
    server/api/path_ids.py), so ``/v1/accounts/me/device-list`` is the PUT route alone, not also
    ``GET /v1/accounts/{account_id}/device-list`` with the id "me", as the document says."""
    with make_server().client() as client:
        an_id = "AAAAAAAAAAAAAAAAAAAAAA"
        expected = {
            "/v1/accounts/me/device-list": {"DELETE": "PUT", "GET": "PUT"},
            "/v1/accounts/me/device-grants": {"GET": "POST"},
            "/v1/accounts/me/device-name": {"GET": "PUT"},
            "/v1/accounts/me/device-names": {"PUT": "GET"},
            "/v1/accounts/me/key-handoffs": {"POST": "GET"},
            f"/v1/provisioning/{an_id}": {"POST": "DELETE, GET, PUT"},
            f"/v1/accounts/{an_id}/device-list": {"POST": "GET", "PUT": "GET"},
            f"/v1/accounts/{an_id}/device-list/signed": {"GET": "PUT"},
            "/v1/conversations": {"DELETE": "GET, POST"},
            f"/v1/conversations/{an_id}/envelopes": {"PUT": "GET, POST"},
            f"/v1/conversations/{an_id}/members/{an_id}": {"GET": "DELETE"},
            "/v1/keys": {"DELETE": "PUT"},
            "/v1/keys/claim": {"GET": "POST"},
        }
        for path, cases in expected.items():
            for method, allow in cases.items():
                r = client.request(method, path)
                assert r.status_code == 405, (method, path, r.text)
                assert r.headers["content-type"] == "application/problem+json"
                assert r.headers["allow"] == allow, (method, path)
                # every method named is answered by some route (not 405)
                for named in allow.split(", "):
                    assert client.request(named, path).status_code != 405, (named, path)
