"""JWT authentication and persona roles.

The embedded default signs tokens with the lab's own development issuer (an ES256 key kept
in the data directory, mode 0600); in the cluster tokens come from the Lab's OIDC issuer and
are verified against its JWKS. Keys never reach logs or error messages.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Request, Security
from fastapi.security import HTTPBearer

from api_services.config import Settings
from api_services.errors import Forbidden, Unauthorized
from api_services.telemetry import current_context

PERSONAS = ("patient", "clinician", "admin", "sre")
DEV_KID = "pim-lab-dev-1"


@dataclass(frozen=True)
class Principal:
    user_id: str
    persona: str


def load_or_create_dev_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The development issuer's signing key, created once per data directory."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        try:
            os.link(tmp, path)  # first writer wins when two processes race
        except FileExistsError:
            pass
        os.unlink(tmp)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def issue_dev_token(settings: Settings, persona: str, user_id: str, ttl_seconds: int = 3600) -> str:
    if persona not in PERSONAS:
        raise ValueError(f"persona must be one of {', '.join(PERSONAS)}")
    if not 0 < ttl_seconds <= settings.token_max_lifetime_seconds:
        raise ValueError(f"ttl must be 1..{settings.token_max_lifetime_seconds} s, the maximum token lifetime "
                         "(PIM_TOKEN_MAX_LIFETIME_SECONDS)")
    key = load_or_create_dev_key(settings.dev_issuer_key_file)
    now = int(time.time())
    claims = {"iss": settings.dev_issuer, "aud": settings.oidc_audience, "sub": user_id,
              settings.persona_claim: persona, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": DEV_KID})


LEEWAY_SECONDS = 60


def _jwt_problem(exc: jwt.PyJWTError, audience: str) -> str:
    """What is wrong with a token, in words (never the library's exception class)."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token is not valid yet"
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"token audience is not {audience}"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token issuer is not the accepted issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the required {exc.claim} claim"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature does not verify"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm is not accepted"
    if isinstance(exc, jwt.PyJWKClientError):
        return "token signing key is unknown to the issuer's key set"
    if isinstance(exc, jwt.DecodeError):
        return "token is not a well-formed JWT"
    return "token is invalid"


class Authenticator:
    """Verifies bearer tokens from the configured issuer: OIDC when set, else the dev issuer."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._verified: dict[str, tuple[Principal, float]] = {}
        if settings.oidc_issuer and settings.oidc_jwks_uri:
            self._jwks = jwt.PyJWKClient(settings.oidc_jwks_uri, cache_keys=True, lifespan=300)
            self._dev_public = None
        else:
            self._jwks = None
            self._dev_public = load_or_create_dev_key(settings.dev_issuer_key_file).public_key()

    CACHE_SIZE = 4096
    CACHE_SECONDS = 60.0

    def verify(self, token: str) -> Principal:
        """Verified tokens are remembered (until exp, at most 60 s, so a JWKS rotation still bites
        quickly): an ES256 verification costs more CPU than the rest of a cheap request."""
        hit = self._verified.get(token)
        now = time.time()
        if hit is not None and now < hit[1]:
            return hit[0]
        principal_, exp = self._verify(token)
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal_, min(exp, now + self.CACHE_SECONDS))
        return principal_

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            if self._jwks is not None:
                key = self._jwks.get_signing_key_from_jwt(token).key
                issuer, algorithms = self.settings.oidc_issuer, ["RS256", "ES256"]
            else:
                key, issuer, algorithms = self._dev_public, self.settings.dev_issuer, ["ES256"]
            claims = jwt.decode(token, key, algorithms=algorithms, audience=self.settings.oidc_audience,
                                issuer=issuer, leeway=LEEWAY_SECONDS,
                                options={"require": ["exp", "sub", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise Unauthorized(_jwt_problem(exc, self.settings.oidc_audience), "invalid_token") from None
        now = time.time()
        issued = claims.get("iat")
        if issued is not None and (not isinstance(issued, (int, float)) or issued > now + LEEWAY_SECONDS):
            raise Unauthorized("token was issued in the future", "invalid_token")
        lifetime = float(claims["exp"]) - float(issued if issued is not None else now)
        if lifetime > self.settings.token_max_lifetime_seconds + LEEWAY_SECONDS:
            raise Unauthorized(f"token lifetime exceeds the maximum of {self.settings.token_max_lifetime_seconds} s",
                               "invalid_token")
        persona = claims.get(self.settings.persona_claim)
        if persona not in PERSONAS:
            raise Unauthorized(f"token carries no known persona (claim {self.settings.persona_claim!r})",
                               "invalid_token")
        sub = str(claims["sub"])
        if not sub or len(sub) > 64:
            raise Unauthorized("token subject is invalid", "invalid_token")
        return Principal(user_id=sub, persona=persona), float(claims["exp"])

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("missing bearer token", "missing_token", challenge="invalid_request")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("authorization must be a bearer token", "invalid_token", challenge="invalid_request")
        principal = self.verify(token.strip())
        ctx = current_context()
        ctx.user_id, ctx.persona = principal.user_id, principal.persona
        return principal


_bearer = HTTPBearer(auto_error=False, description="JWT from the lab's issuer (dev issuer: `pimlab token`)")


async def principal(request: Request, _documented=Security(_bearer)) -> Principal:
    """FastAPI dependency: the authenticated, rate-limited caller (401/429 otherwise).

    Async on purpose: verification is CPU-cheap, and skipping the threadpool hop matters per request."""
    rt = request.app.state.runtime
    who = rt.auth.authenticate(request.headers.get("authorization"))
    rt.rate_limit(who.user_id, who.persona)
    return who


def require(who: Principal, *personas: str) -> None:
    if who.persona not in personas:
        raise Forbidden(f"persona {who.persona} may not do this", "persona_forbidden")
