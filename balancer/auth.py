"""Who may call what: the admin token (or loopback only), the inference API keys, and what
every admin write must show so that no web page can make one (a cross-site `no-cors` POST, a
DNS-rebound page reading our answers)."""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.requests import Request

from balancer.config import Settings
from balancer.errors import Forbidden, Unauthorized, UnsupportedMediaType

_DEFAULT_PORTS = {"http": 80, "https": 443}


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


def check_admin_write(request: Request, settings: Settings) -> None:
    """Every admin write (the routes the table marks `admin`) passes here before its endpoint.

    A browser sends a cross-site form or `no-cors` POST without preflight only as text/plain,
    form data or multipart, so JSON is required; it always names the page's origin in `Origin`,
    which must be ours; and a page reached through DNS rebinding talks to us under its own host
    name, which without a token must be loopback (or allowed by BALANCER_ALLOWED_HOSTS).
    """
    require_admin(request, settings)
    host = request.headers.get("host", "")
    if settings.admin_token is None and not _host_allowed(host, settings.allowed_hosts):
        raise Forbidden(
            f"admin calls must name this balancer by a loopback address in Host (got {host!r}) "
            "while BALANCER_ADMIN_TOKEN is unset; list other names in BALANCER_ALLOWED_HOSTS"
        )
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, host, request.url.scheme):
        raise Forbidden(
            f"admin calls from another origin ({origin}) are refused: they come from a web page"
        )
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(
            "admin calls need the header Content-Type: application/json "
            f"(got {content_type or 'none'!r})"
        )


def _host_allowed(host: str, allowed: list[str]) -> bool:
    name = _host_name(host)
    return is_loopback(name) or name in {a.lower() for a in allowed}


def _host_name(host: str) -> str:
    """The name in a Host header, without its port (IPv6 brackets removed)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _same_origin(origin: str, host: str, scheme: str) -> bool:
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False  # "null" (a sandboxed page, a file), or garbage
    try:
        origin_port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        return False
    name = _host_name(host)
    _, colon, port = host.strip().rpartition(":") if not host.endswith("]") else ("", "", "")
    host_port = int(port) if colon and port.isdigit() else _DEFAULT_PORTS.get(scheme, 80)
    return parts.hostname.strip("[]") == name and origin_port == host_port


def require_admin(request: Request, settings: Settings) -> None:
    """Register and offline change what every client gets: a token, or a loopback client."""
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
