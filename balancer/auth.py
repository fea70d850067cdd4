"""Who may call what: the admin token (or loopback only), and the inference API keys."""

from __future__ import annotations

import hmac
import ipaddress

from starlette.requests import Request

from balancer.config import Settings
from balancer.errors import Forbidden, Unauthorized


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str, secrets: list[str]) -> bool:
    # Compare against every secret, in constant time each, so timing says nothing of which failed.
    given = token.encode()
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, secret.encode())
    return found


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def require_admin(request: Request, settings: Settings) -> None:
    """Register and offline change what every client gets: guard them."""
    if settings.admin_token is not None:
        token = _bearer(request)
        if token is None or not _matches(token, [settings.admin_token.get_secret_value()]):
            raise Unauthorized(
                "this admin call needs the header Authorization: Bearer <BALANCER_ADMIN_TOKEN>"
            )
        return
    if not is_loopback(request.client.host if request.client else None):
        raise Forbidden(
            "admin calls are accepted only from loopback while BALANCER_ADMIN_TOKEN is unset; "
            "set it and send Authorization: Bearer <token>"
        )


def require_api_key(request: Request, settings: Settings) -> None:
    if not settings.api_keys:
        return
    token = _bearer(request)
    if token is None or not _matches(token, settings.api_keys):
        raise Unauthorized(
            "this call needs the header Authorization: Bearer <key>, with a key from "
            "BALANCER_API_KEYS"
        )
