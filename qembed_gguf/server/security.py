"""Keeping web browsers out: the ``Host`` allow-list (DNS rebinding) and its policy.

A page on any web site can make its visitor's browser send requests to ``http://127.0.0.1:8000``.
Two rules keep such pages from using a server on the visitor's machine:

- *DNS rebinding*: the page's own name (``evil.example``) is made to resolve to ``127.0.0.1``,
  so that the browser treats the server as same-origin and lets the page read its answers. The
  browser still sends ``Host: evil.example``: :class:`HostGuard` refuses every ``Host`` that is not
  on the allow-list (421, OpenAI's error body).
- *Blind POSTs*: a cross-origin ``text/plain`` POST needs no permission (the page cannot read the
  answer, but the server would do the work). ``application/json`` needs a CORS preflight, which
  fails unless ``--cors-origin`` allows the page, so the server requires that media type (the app
  answers 415 otherwise).

:func:`allowed_hosts` is the policy: a loopback server answers only loopback names unless told
otherwise; a server listening on other interfaces is reached by whatever names its clients use
(its protection is the API key), so it accepts any ``Host`` unless an allow-list is given.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Iterable, Sequence

from .protocol import error_body, shown

__all__ = ["LOOPBACK_NAMES", "HostGuard", "allowed_hosts", "host_name", "host_allowed", "is_loopback"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether a bind address (or name) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The name in a ``Host`` header (or an allow-list entry), lower-cased, without the port:
    ``"LocalHost:8000"`` → ``"localhost"``, ``"[::1]:8000"`` → ``"::1"``."""
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 literal, maybe with a port
        end = value.find("]")
        return value[1:end] if end > 0 else value
    name, colon, port = value.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        return name
    return value


def allowed_hosts(configured: Sequence[str] | None, bind_host: str | None) -> tuple[str, ...] | None:
    """The ``Host`` names a server answers, or None for any.

    ``configured`` (``--allowed-host``, repeatable): those names (any port; ``*`` = any host,
    ``*.example.com`` = its subdomains). Without it: bound to loopback (or unknown, as under
    :func:`create_app`), only the loopback names; bound elsewhere, any ``Host``. A list always
    includes the loopback names and a specific bind address: a page reaching the server under
    those names is cross-origin (CORS and the JSON media type keep it out), not rebound, and local
    health probes use them.
    """
    names = [host_name(n) for n in configured or ()]
    if "*" in names:
        return None
    if not names and not (bind_host is None or is_loopback(bind_host)):
        return None
    names += LOOPBACK_NAMES
    if bind_host and not _unspecified(bind_host):
        names.append(host_name(bind_host))
    return tuple(dict.fromkeys(names))


def _unspecified(host: str) -> bool:
    """``0.0.0.0`` / ``::``: every interface, not a name a client sends."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    name = host_name(host)
    for entry in allowed:
        if name == entry or (entry.startswith("*.") and name.endswith(entry[1:])):
            return True
    return False


class HostGuard:
    """ASGI middleware: HTTP requests whose ``Host`` is not in ``allowed`` get 421. A request
    without a ``Host`` header (HTTP/1.0) passes: browsers always send one."""

    def __init__(self, app, allowed: Sequence[str]):
        self.app = app
        self.allowed = tuple(allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = next((v for k, v in scope["headers"] if k == b"host"), None)
            if host is not None and not host_allowed(host.decode("latin-1"), self.allowed):
                await self._refuse(host.decode("latin-1"), send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, host: str, send) -> None:
        shown_names = ", ".join(f"[{n}]" if ":" in n else n for n in self.allowed)
        body = json.dumps(error_body(
            f"this server does not answer for the host {shown(host)} (it answers {shown_names}; start it with "
            f"--allowed-host NAME to add a name)", type="invalid_request_error", code="host_not_allowed"),
            ensure_ascii=True).encode()
        await send({"type": "http.response.start", "status": 421,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
