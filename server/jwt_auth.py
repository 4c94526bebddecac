"""JWT verification for apps that have their own login (`CHATCAST_AUTH=jwt`).

One key source: a shared secret (HS256), a public key in PEM (RS256 or ES256), or a JWKS
file (the key named by the token's `kid`). `exp` and `sub` are required; `iss` and `aud`
are checked when configured. `sub` is the chatcast user id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from chatcast.core.errors import Unauthorized
from chatcast.server.settings import Settings

LEEWAY_S = 5.0  # clock skew allowed on exp / nbf / iat
MAX_SUBJECT = 64  # the length of a user id


class JwtConfigError(ValueError):
    """CHATCAST_AUTH=jwt without a usable key (message names the setting, never a key)."""


class JwtVerifier:
    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self._key: Any = None
        self._algorithms: list[str] = []
        self._jwks: jwt.PyJWKSet | None = None
        if settings.jwt_jwks_file is not None:
            try:
                self._jwks = jwt.PyJWKSet.from_json(Path(settings.jwt_jwks_file).read_text())
            except (OSError, jwt.PyJWTError, ValueError) as exc:
                raise JwtConfigError("CHATCAST_JWT_JWKS_FILE cannot be read as a JWKS "
                                     f"({exc.__class__.__name__})") from None
        elif settings.jwt_public_key:
            self._key, self._algorithms = _public_key(settings.jwt_public_key)
        elif settings.jwt_secret:
            self._key, self._algorithms = settings.jwt_secret, ["HS256"]
        else:
            raise JwtConfigError("CHATCAST_AUTH=jwt needs CHATCAST_JWT_SECRET, "
                                 "CHATCAST_JWT_PUBLIC_KEY or CHATCAST_JWT_JWKS_FILE")

    def verify(self, token: str) -> str:
        """The token's subject (user id); Unauthorized if the token is not valid now."""
        try:
            key, algorithms = self._key_for(token)
            claims = jwt.decode(token, key, algorithms=algorithms, audience=self.audience,
                                issuer=self.issuer, leeway=LEEWAY_S,
                                options={"require": ["exp", "sub"],
                                         "verify_aud": self.audience is not None})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token ({_reason(exc)})") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT:
            raise Unauthorized(f"the token's sub must be 1-{MAX_SUBJECT} characters")
        return sub

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        if self._jwks is None:
            return self._key, self._algorithms
        kid = jwt.get_unverified_header(token).get("kid")
        keys = self._jwks.keys
        if kid is not None:
            keys = [k for k in keys if k.key_id == kid]
        elif len(keys) > 1:
            raise jwt.InvalidTokenError("no kid in the header")
        if not keys:
            raise jwt.InvalidTokenError("unknown kid")
        found = keys[0]
        return found, [found.algorithm_name]


def _public_key(value: str) -> tuple[Any, list[str]]:
    """A PEM given inline or as a path to a file."""
    pem = value if value.lstrip().startswith("-----BEGIN") else _read(value)
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise JwtConfigError("CHATCAST_JWT_PUBLIC_KEY is not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, ["ES256"]
    raise JwtConfigError("CHATCAST_JWT_PUBLIC_KEY must be an RSA or EC (P-256) key")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        raise JwtConfigError("CHATCAST_JWT_PUBLIC_KEY is neither a PEM nor a readable "
                             "file") from None


def _reason(exc: jwt.PyJWTError) -> str:
    """A short, secret-free reason (PyJWT's messages never contain the token)."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing {exc.claim}"
    return "malformed or not accepted"
