"""Registration, password and device-key login, token rotation, expiry and revocation."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from saltline.server.settings import Settings
from tests.live import LiveServer, ManualClock
from tests.server.helpers import (
    PASSWORD,
    Account,
    Device,
    add_device,
    login,
    new_account,
    register,
    register_body,
    remove_device,
    sign_challenge,
    unique_username,
)


def _code(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return str(r.json()["code"])


def test_register_and_login(client: httpx.Client) -> None:
    account = register(client)
    me = client.get("/v1/auth/me", headers=account.first.headers)
    assert me.status_code == 200
    assert me.json() == {
        "account_id": account.account_id,
        "device_id": account.first.id,
        "username": account.username.lower(),
    }
    r = login(client, account, account.first)
    assert r.status_code == 200
    assert r.json()["token_type"] == "Bearer"
    assert client.get("/v1/auth/me", headers=account.first.headers).status_code == 200


def test_username_rules(client: httpx.Client) -> None:
    name = unique_username("Mixed")
    register(client, name)
    r = client.post("/v1/accounts", json=register_body(new_account(name.upper())))
    assert (r.status_code, _code(r)) == (409, "username_taken")
    for bad in ("ab", "x" * 33, "has space", "émile_1234"):
        r = client.post(
            "/v1/accounts", json=register_body(new_account(unique_username())) | {"username": bad}
        )
        assert (r.status_code, _code(r)) == (422, "username_invalid"), bad


def test_password_rules(client: httpx.Client) -> None:
    for bad in ("short", "x" * 257):
        account = new_account()
        account.password = bad
        r = client.post("/v1/accounts", json=register_body(account))
        assert (r.status_code, _code(r)) == (422, "password_weak")


def test_wrong_password_and_unknown_device(client: httpx.Client) -> None:
    account = register(client)
    account.password = "not the password"
    r = login(client, account, account.first)
    assert (r.status_code, _code(r)) == (401, "unauthorized")
    account.password = PASSWORD
    stranger = new_account().first
    r = login(client, account, stranger)
    assert (r.status_code, _code(r)) == (403, "device_not_active")
    r = client.post(
        "/v1/auth/login", json={"username": "nobody_here", "password": PASSWORD, "device_id": stranger.id}
    )
    assert (r.status_code, _code(r)) == (401, "unauthorized")


def test_missing_and_garbage_tokens(client: httpx.Client) -> None:
    assert _code(client.get("/v1/auth/me")) == "unauthorized"
    r = client.get("/v1/auth/me", headers={"Authorization": "Bearer not.a.jwt"})
    assert (r.status_code, _code(r)) == (401, "unauthorized")


def test_refresh_rotates_and_reuse_revokes_family(client: httpx.Client) -> None:
    account = register(client)
    first_refresh = account.first.refresh_token
    r = client.post("/v1/auth/refresh", json={"refresh_token": first_refresh})
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first_refresh
    assert (
        client.get("/v1/auth/me", headers={"Authorization": f"Bearer {second['access_token']}"}).status_code
        == 200
    )

    # The first token again: reuse. The whole family dies, including the legitimate successor.
    r = client.post("/v1/auth/refresh", json={"refresh_token": first_refresh})
    assert (r.status_code, _code(r)) == (401, "refresh_token_reused")
    r = client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert (r.status_code, _code(r)) == (401, "token_revoked")
    # Another login (another family) is unaffected.
    assert login(client, account, account.first).status_code == 200
    r = client.post("/v1/auth/refresh", json={"refresh_token": account.first.refresh_token})
    assert r.status_code == 200
    r = client.post("/v1/auth/refresh", json={"refresh_token": "never-issued"})
    assert (r.status_code, _code(r)) == (401, "unauthorized")


def test_reuse_revokes_the_access_tokens_of_the_family_at_once(client: httpx.Client) -> None:
    account = register(client)
    first_refresh, first_access = account.first.refresh_token, account.first.headers
    second = client.post("/v1/auth/refresh", json={"refresh_token": first_refresh}).json()
    second_access = {"Authorization": f"Bearer {second['access_token']}"}
    # another login of the same device: another family
    r = login(client, account, account.first)
    assert r.status_code == 200
    other_access = {"Authorization": f"Bearer {r.json()['access_token']}"}
    for headers in (first_access, second_access, other_access):
        assert client.get("/v1/auth/me", headers=headers).status_code == 200

    r = client.post("/v1/auth/refresh", json={"refresh_token": first_refresh})
    assert (r.status_code, _code(r)) == (401, "refresh_token_reused")
    # every access token of the reused family stops working now, before it expires
    for headers in (first_access, second_access):
        r = client.get("/v1/auth/me", headers=headers)
        assert (r.status_code, _code(r)) == (401, "token_revoked")
    assert client.get("/v1/auth/me", headers=other_access).status_code == 200


def test_access_and_refresh_expiry(make_server: Callable[..., LiveServer], clock: ManualClock) -> None:
    server = make_server(access_token_ttl_s=60, refresh_token_ttl_s=3600)
    with server.client() as client:
        account = register(client)
        clock.advance(61)
        r = client.get("/v1/auth/me", headers=account.first.headers)
        assert (r.status_code, _code(r)) == (401, "token_expired")
        r = client.post("/v1/auth/refresh", json={"refresh_token": account.first.refresh_token})
        assert r.status_code == 200
        fresh = r.json()
        assert (
            client.get(
                "/v1/auth/me", headers={"Authorization": f"Bearer {fresh['access_token']}"}
            ).status_code
            == 200
        )
        clock.advance(3601)
        r = client.post("/v1/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
        assert (r.status_code, _code(r)) == (401, "token_expired")


def test_removed_device_is_locked_out_at_once(live_server: LiveServer, client: httpx.Client) -> None:
    removed_calls: list[tuple[str, str]] = []

    async def hook(account_id: str, device_id: str) -> None:
        removed_calls.append((account_id, device_id))

    live_server.ctx.on_device_removed.append(hook)
    account = register(client)
    laptop = add_device(client, account)
    assert client.get("/v1/auth/me", headers=laptop.headers).status_code == 200
    remove_device(client, account, laptop)
    assert removed_calls == [(account.account_id, laptop.id)]
    r = client.get("/v1/auth/me", headers=laptop.headers)
    assert (r.status_code, _code(r)) == (401, "token_revoked")
    r = client.post("/v1/auth/refresh", json={"refresh_token": laptop.refresh_token})
    assert (r.status_code, _code(r)) == (401, "token_revoked")
    r = login(client, account, laptop)
    assert (r.status_code, _code(r)) == (403, "device_not_active")
    assert client.get("/v1/auth/me", headers=account.first.headers).status_code == 200


def test_device_login_by_challenge(client: httpx.Client, clock: ManualClock) -> None:
    account = register(client)
    phone = account.first

    def challenge() -> str:
        r = client.post("/v1/auth/challenge", json={"username": account.username, "device_id": phone.id})
        assert r.status_code == 200
        return str(r.json()["nonce"])

    nonce = challenge()
    body = {
        "username": account.username,
        "device_id": phone.id,
        "nonce": nonce,
        "signature": sign_challenge(phone, account.username, nonce),
    }
    r = client.post("/v1/auth/device-login", json=body)
    assert r.status_code == 200, r.text
    assert (
        client.get("/v1/auth/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}).status_code
        == 200
    )

    r = client.post("/v1/auth/device-login", json=body)  # replay
    assert (r.status_code, _code(r)) == (401, "challenge_invalid")

    nonce = challenge()
    other = new_account().first  # a signature by a key that is not this device's
    r = client.post(
        "/v1/auth/device-login",
        json=body | {"nonce": nonce, "signature": sign_challenge(other, account.username, nonce)},
    )
    assert (r.status_code, _code(r)) == (401, "device_signature_invalid")

    nonce = challenge()
    clock.advance(3600)
    r = client.post(
        "/v1/auth/device-login",
        json=body | {"nonce": nonce, "signature": sign_challenge(phone, account.username, nonce)},
    )
    assert (r.status_code, _code(r)) == (401, "challenge_invalid")


def test_refresh_token_reuse_calls_tokens_revoked_hooks(live_server: LiveServer) -> None:
    calls: list[tuple[str, str]] = []

    async def hook(account_id: str, device_id: str) -> None:
        calls.append((account_id, device_id))

    async def failing(account_id: str, device_id: str) -> None:
        raise RuntimeError("hooks must not break the response")

    live_server.ctx.on_tokens_revoked.extend([failing, hook])
    with live_server.client() as client:
        account = register(client)
        first_refresh = account.first.refresh_token
        assert client.post("/v1/auth/refresh", json={"refresh_token": first_refresh}).status_code == 200
        assert calls == []  # a normal rotation revokes nothing
        r = client.post("/v1/auth/refresh", json={"refresh_token": first_refresh})
        assert (r.status_code, _code(r)) == (401, "refresh_token_reused")
    assert calls == [(account.account_id, account.first.id)]


def _client_from(server: LiveServer, ip: str) -> httpx.Client:
    """A client whose connections come from ``ip`` (any 127.0.0.0/8 address reaches the server
    on Linux), so per-IP limits see distinct addresses without trusting any header."""
    return server.client(transport=httpx.HTTPTransport(local_address=ip))


def _device_login(client: httpx.Client, account: Account, signer: Device | None = None) -> httpx.Response:
    body = {"username": account.username, "device_id": account.first.id}
    r = client.post("/v1/auth/challenge", json=body)
    assert r.status_code == 200, r.text
    nonce = r.json()["nonce"]
    signature = sign_challenge(signer or account.first, account.username, nonce)
    return client.post("/v1/auth/device-login", json=body | {"nonce": nonce, "signature": signature})


def test_login_rate_limited(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(
        rate_limit_login_failures_per_account_ip="3/minute", rate_limit_register_per_ip="2/minute"
    )
    with server.client() as client:
        account = register(client)
        wrong = {"username": account.username, "password": "not-the-password", "device_id": account.first.id}
        for _ in range(3):
            r = client.post("/v1/auth/login", json=wrong)
            assert (r.status_code, _code(r)) == (401, "unauthorized")
        r = client.post("/v1/auth/login", json=wrong)
        assert (r.status_code, _code(r)) == (429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1
        assert login(client, account, account.first).status_code == 429  # this address is locked
        register(client)
        r = client.post("/v1/accounts", json=register_body(new_account()))
        assert (r.status_code, _code(r)) == (429, "rate_limited")
    metrics = server.client().get("/metrics").text
    assert 'saltline_rate_limited_total{scope="login-fail-account-ip"} 2.0' in metrics
    assert 'saltline_rate_limited_total{scope="register-ip"} 1.0' in metrics


def test_wrong_passwords_from_two_addresses_do_not_lock_the_owner_out(
    make_server: Callable[..., LiveServer],
) -> None:
    """Issue 13: five wrong passwords from each of two addresses made the owner's correct
    password and device-key login answer 429. With the defaults (5/minute per (account, IP),
    100/hour per account), the attacker's addresses are refused and the owner's are not."""
    defaults = Settings.model_fields
    server = make_server(
        **{
            name: defaults[name].default
            for name in (
                "rate_limit_login_per_account",
                "rate_limit_login_failures_per_account_ip",
                "rate_limit_login_per_ip",
            )
        }
    )
    assert server.settings.rate_limit_login_per_account == "100/hour"
    with server.client() as owner:
        account = register(owner)
    wrong = {"username": account.username, "password": "not-the-password", "device_id": account.first.id}
    for ip in ("127.0.0.2", "127.0.0.3"):
        with _client_from(server, ip) as attacker:
            codes = [attacker.post("/v1/auth/login", json=wrong).status_code for _ in range(6)]
            assert codes == [401] * 5 + [429]  # the sixth is refused: this pair is locked
            assert login(attacker, account, account.first).status_code == 429  # even the right one
            assert _device_login(attacker, account).status_code == 200  # never locked by passwords
    with server.client() as owner:  # 127.0.0.1: has not failed
        assert login(owner, account, account.first).status_code == 200
        assert _device_login(owner, account).status_code == 200


def test_global_account_limit_costs_a_fresh_address_per_guess(
    make_server: Callable[..., LiveServer],
) -> None:
    """Once the per-account failure limit is reached, an address that has failed for the account
    is refused at once, while one that has not gets exactly one attempt: the owner's correct
    password still works and each further guess costs the attacker a new address."""
    server = make_server(
        rate_limit_login_per_account="4/hour", rate_limit_login_failures_per_account_ip="5/minute"
    )
    with server.client() as owner:
        account = register(owner)
    wrong = {"username": account.username, "password": "not-the-password", "device_id": account.first.id}
    with _client_from(server, "127.0.0.2") as attacker:
        assert [attacker.post("/v1/auth/login", json=wrong).status_code for _ in range(5)] == [401] * 4 + [
            429
        ]
    for ip in ("127.0.0.3", "127.0.0.4"):  # fresh addresses: one guess each, then refused
        with _client_from(server, ip) as attacker:
            assert [attacker.post("/v1/auth/login", json=wrong).status_code for _ in range(2)] == [401, 429]
    with server.client() as owner:
        assert login(owner, account, account.first).status_code == 200
    with _client_from(server, "127.0.0.5") as other:  # another account is not affected
        stranger = register(other)
        assert login(other, stranger, stranger.first).status_code == 200


def test_successful_logins_do_not_lock_the_account(make_server: Callable[..., LiveServer]) -> None:
    """Only failures count per account: logging in as someone (with their password, or just
    many times) must not lock them out."""
    server = make_server(
        rate_limit_login_per_account="3/minute", rate_limit_login_failures_per_account_ip="3/minute"
    )
    with server.client() as client:
        account = register(client)
        for _ in range(6):
            assert login(client, account, account.first).status_code == 200
        assert _device_login(client, account).status_code == 200


def test_failed_device_signatures_lock_nothing(make_server: Callable[..., LiveServer]) -> None:
    """A device signature cannot be guessed: bad signatures count in no per-account window, so
    they neither lock out the password nor device-key login; device logins are limited per IP."""
    server = make_server(
        rate_limit_login_per_account="2/minute",
        rate_limit_login_failures_per_account_ip="2/minute",
        rate_limit_login_per_ip="4/minute",
    )
    with server.client() as owner:
        account = register(owner)
    other = new_account()
    with _client_from(server, "127.0.0.2") as attacker:
        for _ in range(4):
            r = _device_login(attacker, account, signer=other.first)  # another device's key
            assert (r.status_code, _code(r)) == (401, "device_signature_invalid")
        r = attacker.post(
            "/v1/auth/challenge", json={"username": account.username, "device_id": account.first.id}
        )
        assert (r.status_code, _code(r)) == (429, "rate_limited")  # per IP
        assert login(attacker, account, account.first).status_code == 200  # passwords: no failure
    with server.client() as owner:
        assert _device_login(owner, account).status_code == 200
        assert login(owner, account, account.first).status_code == 200


def test_failures_per_account_and_ip(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(rate_limit_login_failures_per_account_ip="2/minute")
    with server.client() as client:
        account = register(client)
        wrong = {"username": account.username, "password": "not-the-password", "device_id": account.first.id}
        assert [client.post("/v1/auth/login", json=wrong).status_code for _ in range(3)] == [401, 401, 429]


def test_restart_keeps_tokens_valid(live_server: LiveServer) -> None:
    with live_server.client() as client:
        account = register(client)
    live_server.restart()
    with live_server.client() as client:
        assert client.get("/v1/auth/me", headers=account.first.headers).status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_no_secrets_in_logs(make_server: Callable[..., LiveServer], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = make_server(log_level="debug")
    for name in ("uvicorn.access", "uvicorn.error"):  # uvicorn's loggers do not propagate to root
        logging.getLogger(name).addHandler(caplog.handler)
    with server.client() as client:
        account = register(client)
        login(client, account, account.first)
        client.post("/v1/auth/refresh", json={"refresh_token": account.first.refresh_token})
        client.post(
            "/v1/auth/login",
            json={"username": account.username, "password": "wrong-password-123", "device_id": 5},
        )
        client.post(
            "/v1/auth/login",
            json={
                "username": account.username,
                "password": "wrong-password-456",
                "device_id": account.first.id,
            },
        )
        client.get("/v1/auth/me", headers=account.first.headers)
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).removeHandler(caplog.handler)
    text = caplog.text
    assert "POST /v1/auth/login" in text  # the access log was captured
    for secret in (
        PASSWORD,
        "wrong-password-123",
        "wrong-password-456",
        account.first.access_token,
        account.first.refresh_token,
    ):
        assert secret not in text
