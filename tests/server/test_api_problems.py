"""Every error is application/problem+json with a documented stable code; bad input never 500s.
Also: health, readiness, metrics, provisioning channels."""

from __future__ import annotations

import ast
import inspect
import itertools
import os
from collections.abc import Callable

import httpx
import pytest

from saltline.crypto.keys import b64encode
from saltline.server import errors
from saltline.server.errors import ProblemCode
from tests.live import LiveServer, ManualClock
from tests.server.helpers import register

CODES = {c.value for c in ProblemCode}


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = r.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"] == f"https://saltline.dev/problems/{code}"
    assert {"title", "detail"} <= set(body)
    assert code in CODES
    return body


def test_every_problem_code_is_documented() -> None:
    tree = ast.parse(inspect.getsource(errors))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ProblemCode")
    body = cls.body
    documented = {
        stmt.targets[0].id  # type: ignore[attr-defined]
        for stmt, nxt in itertools.pairwise(body)
        if isinstance(stmt, ast.Assign)
        and isinstance(nxt, ast.Expr)
        and isinstance(nxt.value, ast.Constant)
        and isinstance(nxt.value.value, str)
    }
    assert {c.name for c in ProblemCode} == documented


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_input_is_a_problem_never_a_500(client: httpx.Client) -> None:
    _problem(client.get("/v1/no-such-route"), 404, "not_found")
    _problem(client.delete("/v1/accounts"), 405, "method_not_allowed")
    _problem(
        client.post("/v1/accounts", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "validation_failed",
    )
    body = _problem(
        client.post("/v1/accounts", json={"username": 5, "password": ["x"]}), 422, "validation_failed"
    )
    assert "input" not in str(body["errors"])  # submitted values are never echoed
    _problem(
        client.post("/v1/auth/login", json={"username": "abc", "password": "p" * 20, "device_id": "!!"}),
        422,
        "validation_failed",
    )
    _problem(client.post("/v1/auth/login", json=[1, 2, 3]), 422, "validation_failed")
    _problem(
        client.post("/v1/auth/refresh", json={"refresh_token": "x", "extra": 1}), 422, "validation_failed"
    )
    _problem(
        client.post(
            "/v1/accounts", content=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/json"}
        ),
        413,
        "payload_too_large",
    )
    account = register(client)
    h = account.first.headers
    _problem(client.get("/v1/accounts/not-an-id/device-list", headers=h), 404, "not_found")
    _problem(client.get(f"/v1/accounts/{b64encode(os.urandom(16))}", headers=h), 404, "not_found")
    an_id = account.account_id
    _problem(
        client.get(f"/v1/accounts/{an_id}/device-list/chain?since=-1", headers=h), 422, "validation_failed"
    )
    _problem(
        client.get(f"/v1/accounts/{an_id}/device-list/chain?since=abc", headers=h), 422, "validation_failed"
    )
    # a path segment that is not an id reaches no parameterised route (server/api/path_ids.py)
    _problem(client.get("/v1/accounts/x/device-list/chain?since=-1", headers=h), 404, "not_found")
    _problem(client.get("/v1/keys/AAAA/BBBB", headers=h), 404, "not_found")
    _problem(client.put("/v1/keys", json={"one_time_prekeys": "nope"}, headers=h), 422, "validation_failed")
    _problem(
        client.put("/v1/accounts/me/device-list", json={"device_list": "AAAA"}, headers=h),
        422,
        "device_list_invalid",
    )
    _problem(client.get("/v1/auth/me", headers={"Authorization": "Basic abc"}), 401, "unauthorized")


def test_health_ready_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    register(client)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "saltline_accounts_registered_total 1.0" in metrics.text


def test_metrics_registries_are_per_app(make_server: Callable[..., LiveServer]) -> None:
    first, second = make_server(), make_server()
    assert first.ctx.registry is not second.ctx.registry


def test_provisioning_relays_sealed_messages(client: httpx.Client, clock: ManualClock) -> None:
    r = client.post("/v1/provisioning")
    assert r.status_code == 201
    channel = r.json()
    url = f"/v1/provisioning/{channel['channel_id']}"
    put = {"X-Channel-Secret": channel["put_secret"]}
    take = {"X-Channel-Secret": channel["take_secret"]}
    assert client.get(url, headers=take).status_code == 204  # nothing yet
    _problem(
        client.get(url, headers={"X-Channel-Secret": b64encode(os.urandom(32))}),
        404,
        "provisioning_channel_not_found",
    )
    _problem(client.put(url, json={"payload": "AAAA"}), 404, "provisioning_channel_not_found")
    sealed = b64encode(os.urandom(300))
    assert client.put(url, json={"payload": sealed}, headers=put).status_code == 204
    _problem(client.put(url, json={"payload": sealed}, headers=put), 409, "provisioning_payload_exists")
    r = client.get(url, headers=take)
    assert r.status_code == 200
    assert r.json() == {"payload": sealed}
    assert client.get(url, headers=take).status_code == 204  # taken once; the channel lives on

    expiring = client.post("/v1/provisioning").json()
    clock.advance(601)
    _problem(
        client.put(
            f"/v1/provisioning/{expiring['channel_id']}",
            json={"payload": sealed},
            headers={"X-Channel-Secret": expiring["put_secret"]},
        ),
        404,
        "provisioning_channel_not_found",
    )


def test_readyz_does_not_reread_migration_scripts(
    live_server: LiveServer, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head revision is cached at startup: readiness only asks the database."""
    from alembic.script import ScriptDirectory

    def boom(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("/readyz re-read the Alembic scripts")

    monkeypatch.setattr(ScriptDirectory, "from_config", boom)
    assert client.get("/readyz").json() == {"status": "ready"}


@pytest.mark.parametrize("secret", ["short", "x" * 31, "é" * 15])
def test_short_jwt_secret_is_rejected(secret: str) -> None:
    from pydantic import ValidationError

    from saltline.server.settings import Settings

    with pytest.raises(ValidationError) as info:
        Settings(jwt_secret=secret)
    assert "jwt_secret" in str(info.value)
    assert secret not in str(info.value)  # the secret itself is never echoed
    assert Settings(jwt_secret="y" * 32).jwt_secret == "y" * 32
