"""Who may call what: register/offline need the admin token (or, without one, a loopback
client); the inference APIs need an API key once keys are set."""

from __future__ import annotations

import openai
import pytest
import structlog

from tests.inprocess import InProcess, in_process, template_registration

pytestmark = pytest.mark.anyio

REMOTE = "10.0.0.1"


async def test_the_admin_token_guards_register_and_offline() -> None:
    async with in_process(admin_token="t0ken") as lb:
        url = lb.worker("w1")
        registration = template_registration("guarded", url)
        offline = {"model_name": "guarded", "req_url_template": f"{url}/api/generate"}
        right = {"Authorization": "Bearer t0ken"}

        missing = await lb.client.post("/api/server/register", json=registration)
        assert missing.status_code == 401
        assert missing.json()["success"] is False
        assert "BALANCER_ADMIN_TOKEN" in missing.json()["msg"]
        for wrong in ("Bearer nope", "Basic t0ken", "Bearer ", "t0ken"):
            reply = await lb.client.post(
                "/api/server/register", json=registration, headers={"Authorization": wrong}
            )
            assert reply.status_code == 401, wrong
        assert len(lb.parts.registry) == 0

        registered = await lb.client.post("/api/server/register", json=registration, headers=right)
        assert registered.status_code == 200
        assert (await lb.client.post("/api/server/offline", json=offline)).status_code == 401
        removed = await lb.client.post("/api/server/offline", json=offline, headers=right)
        assert removed.status_code == 200


async def test_with_a_token_admin_calls_may_come_from_anywhere() -> None:
    async with in_process(admin_token="t0ken") as lb:
        registration = template_registration("m", lb.worker("w1"))
        async with lb.client_from(REMOTE) as remote:
            reply = await remote.post(
                "/api/server/register",
                json=registration,
                headers={"Authorization": "Bearer t0ken"},
            )
        assert reply.status_code == 200


@pytest.mark.parametrize("path", ["/api/server/register", "/api/server/offline"])
async def test_without_a_token_admin_calls_from_elsewhere_than_loopback_are_forbidden(
    lb: InProcess, path: str
) -> None:
    url = lb.worker("w1")
    await lb.register_template("m", url)
    body = template_registration("m", url) | {"req_url_template": f"{url}/api/generate"}
    async with lb.client_from(REMOTE) as remote:
        reply = await remote.post(path, json=body)
    assert reply.status_code == 403
    assert reply.json()["success"] is False
    assert "loopback" in reply.json()["msg"]
    assert len(lb.parts.registry) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
async def test_without_a_token_loopback_clients_may_register(lb: InProcess, host: str) -> None:
    async with lb.client_from(host) as local:
        reply = await local.post(
            "/api/server/register", json=template_registration("m", lb.worker("w1"))
        )
    assert reply.status_code == 200


async def test_reading_the_registry_needs_no_token(lb: InProcess) -> None:
    await lb.register_template("m", lb.worker("w1"))
    async with lb.client_from(REMOTE) as remote:
        for path in ("/api/server/workers", "/api/server/health", "/healthz", "/metrics"):
            assert (await remote.get(path)).status_code == 200, path


async def test_with_a_token_reading_the_workers_and_their_health_needs_it_too() -> None:
    """The listing and the health view show every worker: with a token, they are admin calls."""
    async with in_process(admin_token="t0ken") as lb:
        for path in ("/api/server/workers", "/api/server/health"):
            assert (await lb.client.get(path)).status_code == 401, path
            authorized = await lb.client.get(path, headers={"Authorization": "Bearer t0ken"})
            assert authorized.status_code == 200, path
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await lb.client.get(path)).status_code == 200, path


async def test_without_a_token_start_up_warns_that_admin_is_loopback_only() -> None:
    with structlog.testing.capture_logs() as logs:
        async with in_process():
            pass
    [warning] = [e for e in logs if e["event"] == "admin_open_to_loopback"]
    assert warning["log_level"] == "warning"


async def test_with_a_token_start_up_does_not_warn() -> None:
    with structlog.testing.capture_logs() as logs:
        async with in_process(admin_token="t0ken"):
            pass
    assert not [e for e in logs if e["event"] == "admin_open_to_loopback"]


async def test_api_keys_guard_the_operategpt_inference_endpoint() -> None:
    async with in_process(api_keys="k1,k2") as lb:
        await lb.register_openai("keyed", lb.worker("w1"))  # admin calls need no API key
        seed = {"input": "x", "model_name": "keyed"}
        denied = await lb.client.post("/api/v1/chat/completions", json=seed)
        assert denied.status_code == 401
        assert denied.json()["success"] is False
        wrong = await lb.client.post(
            "/api/v1/chat/completions", json=seed, headers={"Authorization": "Bearer k3"}
        )
        assert wrong.status_code == 401
        allowed = await lb.client.post(
            "/api/v1/chat/completions", json=seed, headers={"Authorization": "Bearer k2"}
        )
        assert allowed.status_code == 200
        assert lb.fleet.workers["w1"].served["/v1/chat/completions"] == 1


async def test_api_keys_guard_the_openai_api() -> None:
    async with in_process(api_keys="k1,k2") as lb:
        await lb.register_openai("keyed", lb.worker("w1"))
        sdk = lb.sdk

        with pytest.raises(openai.AuthenticationError) as info:
            await sdk("bad").models.list()
        assert info.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            await sdk("bad").chat.completions.create(
                model="keyed", messages=[{"role": "user", "content": "x"}]
            )
        assert "keyed" in {m.id async for m in sdk("k1").models.list()}
        assert lb.fleet.workers["w1"].served.get("/v1/chat/completions") is None


async def test_without_api_keys_inference_is_open(lb: InProcess) -> None:
    await lb.register_openai("m", lb.worker("w1"))
    reply = await lb.client.post("/api/v1/chat/completions", json={"input": "x", "model_name": "m"})
    assert reply.status_code == 200
