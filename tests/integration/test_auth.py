"""Identity modes on a real server: anonymous cookie, API tokens, JWT (HS256, RS256 PEM,
JWKS), single-use tickets for SSE and WebSocket; missing, forged and expired credentials are
refused with 401 / close 4001, and no credential ever reaches the server's log."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import ServerFactory
from tests.helpers.clients import SSEClient, WSClient
from tests.helpers.server import REPO_ROOT, ServerProcess

SECRET = "jwt-secret-for-chatcast-tests-0123456789abcdef"


def assert_no_secrets(srv: ServerProcess, *secrets: str) -> None:
    logs = srv.logs()
    for secret in secrets:
        assert secret and secret not in logs, "a credential appears in the server log"


def create_token(srv: ServerProcess, user: str) -> str:
    """`chatcast token create` against the server's database."""
    env = srv.environment()
    out = subprocess.run([sys.executable, "-m", "chatcast.server.cli", "token", "create",
                          "--user", user], cwd=srv.data_dir, env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    token = out.stdout.strip()
    assert token.startswith("cc_") and token not in out.stderr
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def assert_refused(srv: ServerProcess, headers: Mapping[str, str]) -> None:
    async with httpx.AsyncClient(base_url=srv.url) as http:
        r = await http.get("/api/chats", headers=dict(headers))
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert "set-cookie" not in r.headers
    ws = await WSClient.connect(srv.ws_url, headers=headers)
    assert await ws.wait_closed() == 4001


async def ticket_for(http: httpx.AsyncClient) -> str:
    r = await http.post("/api/tickets")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["expires_in"] == 60 and body["ticket"].startswith("tk_")
    return str(body["ticket"])


async def test_token_mode(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_AUTH": "token"})
    token = create_token(srv, "alice")
    other = create_token(srv, "bob")
    async with httpx.AsyncClient(base_url=srv.url, headers=bearer(token)) as http:
        r = await http.post("/api/chats", json={"title": "t"},
                            headers={"Origin": "https://elsewhere.example"})  # no CSRF check
        assert r.status_code == 201, r.text
        chat = r.json()["id"]
        assert "set-cookie" not in r.headers
        async with await WSClient.connect(srv.ws_url, token=token) as ws:
            await ws.subscribe(chat)
            gen = (await ws.request({"type": "send", "chat": chat, "content": "hi"}))["gen"]
            await ws.wait_done(gen)
        # tickets: SSE and WebSocket, once each
        ticket = await ticket_for(http)
        async with httpx.AsyncClient(base_url=srv.url) as anon:
            async with SSEClient(anon, f"/api/chats/{chat}/events",
                                 params={"ticket": ticket}) as sse:
                assert (await sse.wait_for("snapshot"))["chat"] == chat
            again = await anon.get(f"/api/chats/{chat}/events", params={"ticket": ticket})
            assert again.status_code == 401
            ws_ticket = await ticket_for(http)
            async with await WSClient.connect(f"{srv.ws_url}?ticket={ws_ticket}") as ws:
                assert (await ws.subscribe(chat))["type"] == "ack"
            ws = await WSClient.connect(f"{srv.ws_url}?ticket={ws_ticket}")
            assert await ws.wait_closed() == 4001
            # a ticket is not a credential for other routes
            r = await anon.get("/api/chats", params={"ticket": await ticket_for(http)})
            assert r.status_code == 401
    async with httpx.AsyncClient(base_url=srv.url, headers=bearer(other)) as http:
        assert (await http.get(f"/api/chats/{chat}")).status_code == 404  # bob's view
    await assert_refused(srv, {})
    await assert_refused(srv, bearer("cc_forged-token-value"))
    await assert_refused(srv, bearer(token[:-2]))
    await assert_refused(srv, {"Authorization": "Bearer"})
    assert_no_secrets(srv, token, other, ticket, ws_ticket)


def token_cli(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatcast.server.cli", "token", *args],
                          cwd=srv.data_dir, env=srv.environment(), capture_output=True,
                          text=True, timeout=60)


async def test_token_list_and_revoke(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_AUTH": "token"})
    token = create_token(srv, "carol")
    async with httpx.AsyncClient(base_url=srv.url, headers=bearer(token)) as http:
        assert (await http.get("/api/chats")).status_code == 200
    listed = token_cli(srv, "list", "--user", "carol")
    assert listed.returncode == 0 and token not in listed.stdout  # ids, never values
    (row,) = listed.stdout.splitlines()
    token_id = row.split("\t")[0]
    assert token_cli(srv, "revoke", token_id).returncode == 0
    await assert_refused(srv, bearer(token))
    missing = token_cli(srv, "revoke", token_id)
    assert missing.returncode != 0 and "no token" in missing.stderr


async def test_expired_ticket_is_refused(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_TICKET_TTL_S": "0.5"})
    async with httpx.AsyncClient(base_url=srv.url) as http:
        chat = (await http.post("/api/chats", json={})).json()["id"]
        ticket = (await http.post("/api/tickets")).json()["ticket"]
        await asyncio.sleep(0.8)
        async with httpx.AsyncClient(base_url=srv.url) as anon:
            r = await anon.get(f"/api/chats/{chat}/events", params={"ticket": ticket})
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert_no_secrets(srv, ticket)


async def test_anonymous_mode_refuses_bad_presented_credentials(srv: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=srv.url) as http:
        r = await http.get("/api/chats")  # no credentials: a new anonymous user
        assert r.status_code == 200 and "chatcast_session" in r.headers["set-cookie"]
        cookie = http.cookies["chatcast_session"]
        ticket = await ticket_for(http)  # an anonymous user may take tickets too
        chat = (await http.post("/api/chats", json={})).json()["id"]
    async with httpx.AsyncClient(base_url=srv.url) as anon, \
            SSEClient(anon, f"/api/chats/{chat}/events", params={"ticket": ticket}) as sse:
        assert (await sse.wait_for("snapshot"))["chat"] == chat
    await assert_refused(srv, bearer("cc_not-a-token"))
    ws = await WSClient.connect(f"{srv.ws_url}?ticket=tk_forged")
    assert await ws.wait_closed() == 4001
    assert_no_secrets(srv, cookie, ticket)


def _jwt(key: Any, alg: str = "HS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "user-42", "exp": now + 300, "iat": now, "iss": "https://login.example",
            "aud": "chatcast", **claims}
    headers = {"kid": claims.pop("kid")} if "kid" in claims else None
    body.pop("kid", None)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg,
                      headers=headers)


async def _jwt_accepted(srv: ServerProcess, token: str, user: str = "user-42") -> None:
    async with httpx.AsyncClient(base_url=srv.url, headers=bearer(token)) as http:
        r = await http.post("/api/chats", json={"title": f"of {user}"})
        assert r.status_code == 201, r.text
        chat = r.json()["id"]
        titles = [c["title"] for c in (await http.get("/api/chats")).json()["chats"]]
        assert f"of {user}" in titles
    async with await WSClient.connect(srv.ws_url, token=token) as ws:
        assert (await ws.subscribe(chat))["type"] == "ack"


JWT_ENV = {"CHATCAST_AUTH": "jwt", "CHATCAST_JWT_ISSUER": "https://login.example",
           "CHATCAST_JWT_AUDIENCE": "chatcast"}


async def test_jwt_hs256(server: ServerFactory) -> None:
    srv = await server(env={**JWT_ENV, "CHATCAST_JWT_SECRET": SECRET})
    good = _jwt(SECRET)
    await _jwt_accepted(srv, good)
    # the same sub in a new token is the same user (the User row was made on first use)
    async with httpx.AsyncClient(base_url=srv.url, headers=bearer(_jwt(SECRET))) as http:
        assert len((await http.get("/api/chats")).json()["chats"]) == 1
    bad = [_jwt(SECRET, exp=int(time.time()) - 60),              # expired
           _jwt("another-secret-of-enough-length-0123456789"),   # forged signature
           _jwt(SECRET, iss="https://evil.example"),              # wrong issuer
           _jwt(SECRET, aud="someone-else"),                      # wrong audience
           _jwt(SECRET, sub=None),                                # no subject
           _jwt(SECRET, sub="x" * 65),                            # not a user id
           jwt.encode({"sub": "user-42", "exp": int(time.time()) + 60}, "",
                      algorithm="none"),                          # unsigned
           "not.a.jwt"]
    for token in bad:
        await assert_refused(srv, bearer(token))
    await assert_refused(srv, {})
    assert_no_secrets(srv, SECRET, good, *bad[:4])


def _hs256_signed_with(secret: str) -> str:
    """An HS256 token whose HMAC key is `secret` (PyJWT refuses to make one with a PEM)."""
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    claims = {"sub": "user-42", "exp": int(time.time()) + 300,
              "iss": "https://login.example", "aud": "chatcast"}
    signing_input = header + b"." + b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(sig)).decode()


def _rsa() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


async def test_jwt_rs256_public_key_and_jwks(server: ServerFactory, tmp_path: Path) -> None:
    key, pem = _rsa()
    stranger, _ = _rsa()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    pem_srv, jwks_srv = await asyncio.gather(
        server(env={**JWT_ENV, "CHATCAST_JWT_PUBLIC_KEY": pem}),
        server(env={**JWT_ENV, "CHATCAST_JWT_JWKS_FILE": str(jwks)}))
    await _jwt_accepted(pem_srv, _jwt(key, "RS256", sub="rsa-user"), "rsa-user")
    await _jwt_accepted(jwks_srv, _jwt(key, "RS256", sub="jwks-user", kid="k1"), "jwks-user")
    for srv in (pem_srv, jwks_srv):
        await assert_refused(srv, bearer(_jwt(stranger, "RS256", kid="k1")))
        await assert_refused(srv, bearer(_jwt(key, "RS256", kid="k1",
                                              exp=int(time.time()) - 60)))
        await assert_refused(srv, bearer(_hs256_signed_with(pem)))  # key confusion
    await assert_refused(jwks_srv, bearer(_jwt(key, "RS256", kid="unknown")))


async def test_jwt_mode_without_a_key_does_not_start(server: ServerFactory) -> None:
    srv = await server(env={"CHATCAST_AUTH": "jwt"}, start=False)
    srv.spawn()
    assert await srv.wait_async(timeout=30) != 0
    assert "CHATCAST_JWT_SECRET" in srv.logs()


async def test_generated_signing_key_is_logged_by_place_not_value(server: ServerFactory,
                                                                  tmp_path: Path) -> None:
    srv = await server(env={"CHATCAST_SECRET_KEY": ""}, data_dir=tmp_path / "fresh")
    key = (srv.data_dir / "secret_key").read_text().strip()
    assert "generated a new signing key" in srv.logs()
    assert_no_secrets(srv, key)


def test_repo_root_has_no_generated_key() -> None:
    assert not (REPO_ROOT / "secret_key").exists()
