"""Browser-facing safety (DESIGN.md section 13): the hosts the API answers for, the origins
that may change things, and headers that keep the dashboard out of other sites' frames.

A fresh install is open on loopback, and loopback is reachable from every page the user
opens. Through DNS rebinding a hostile domain that resolves to 127.0.0.1 becomes same-origin
with the dashboard; any page can also POST a form or a `fetch` to it. So, before any route:

1. a request whose `Host` is not one this server serves is a 400 naming the host and the
   setting (`GANFORGE_ALLOWED_HOSTS`): a rebinding page's requests carry its own name;
2. a write (POST, PATCH, PUT, DELETE) whose `Origin` (else `Referer`) is another origin than
   the server's own is a 403, token or not; curl, the CLI and scripts send neither;
3. every response says `nosniff` and may not be framed (a click on Delete cannot be stolen).
   Dashboard pages also carry `DASHBOARD_CSP`, which allows only the dashboard's own files.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SETTING = "GANFORGE_ALLOWED_HOSTS"
# The names a loopback bind answers for, on any port it listens on.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
WILDCARD_BINDS = ("0.0.0.0", "::", "")

# Only the dashboard's own files: no inline script or style, no other origin, no framing.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Every other response (the API's JSON, files, /docs): no framing, no MIME sniffing.
BASE_HEADERS = {
    "content-security-policy": "frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def split_host(value: str) -> tuple[str, int | None]:
    """`name[:port]`, `[v6][:port]` -> (lower-case name without brackets or final dot, port).
    A malformed value gives ("", None), which no policy allows."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return "", None
        port_text = rest[1:]
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    elif ":" in value and not _is_address(value):
        return "", None
    else:  # a name, or a bare IPv6 address
        name, port_text = value, ""
    if port_text and not port_text.isdigit():
        return "", None
    return name.rstrip("."), int(port_text) if port_text else None


def _display(name: str) -> str:
    return f"[{name}]" if ":" in name else name


@dataclass(frozen=True)
class HostPolicy:
    """Which `Host` names are served: the loopback names always, then the setting's entries
    (exact names, `.example.com` or `*.example.com` for subdomains, `*` for any)."""

    names: frozenset[str]
    suffixes: tuple[str, ...] = ()
    any_host: bool = False

    @classmethod
    def parse(cls, raw: str) -> HostPolicy:
        names, suffixes, any_host = set(LOOPBACK_NAMES), [], False
        for entry in (e.strip() for e in raw.split(",")):
            if not entry:
                continue
            if entry == "*":
                any_host = True
            elif entry.startswith(("*.", ".")):
                suffixes.append("." + entry.lstrip("*.").lower().rstrip("."))
            else:
                name, _ = split_host(entry)
                if not re.fullmatch(r"[a-z0-9_.:-]+", name):
                    raise ValueError(f"{entry!r} is not a host name or address")
                names.add(name)
        return cls(frozenset(names), tuple(suffixes), any_host)

    def listed(self, name: str) -> bool:
        return bool(name) and (name in self.names or any(name.endswith(s) for s in self.suffixes))

    def describe(self) -> str:
        extra = sorted(self.names - set(LOOPBACK_NAMES)) + [f"*{s}" for s in self.suffixes]
        return ", ".join([*(_display(n) for n in LOOPBACK_NAMES), *map(_display, extra)])


def own_names(bind: str) -> list[str]:
    """The names a non-loopback bind is reached by, for `ganforge api|up --host` to add to
    the setting: the address itself, or for 0.0.0.0 / :: this machine's name and addresses."""
    if bind not in WILDCARD_BINDS:
        return [split_host(bind)[0] or bind]
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(info[4][0]))
    except OSError:  # a host name that does not resolve: its name is all there is
        pass
    return sorted(n.lower() for n in names if n and not is_loopback(n))


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """Whether a bind address is this machine only: 127.0.0.0/8, ::1 and `localhost`; a name
    or 0.0.0.0 may be reached from elsewhere."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def merged_setting(current: str, extra: Iterable[str]) -> str:
    """The setting with `extra` names appended (each once)."""
    entries = [e.strip() for e in current.split(",") if e.strip()]
    entries += [e for e in extra if e not in entries]
    return ",".join(entries)


def same_origin(origin: str, host: str) -> bool:
    """Whether `origin` (`scheme://name[:port]`, from Origin or Referer) is the origin whose
    `Host` header is `host`. The scheme is not compared, so a TLS proxy in front is fine."""
    try:
        parts = urlsplit(origin)
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = 443 if parts.scheme == "https" else 80
    name, port = split_host(host)
    return (parts.hostname.rstrip("."), origin_port or default) == (name, port or default)


class BrowserGuard:
    """ASGI middleware: the Host check, the Origin check for writes, and the headers.

    `tokens_on` says whether API tokens exist: `*` in the setting serves any host only then
    (with no token, any page could drive the API through any name)."""

    def __init__(
        self, app: ASGIApp, *, policy: HostPolicy, tokens_on: Callable[[], Awaitable[bool]]
    ) -> None:
        self.app, self.policy, self.tokens_on = app, policy, tokens_on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the app serves no websockets
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = await self._refusal(scope, headers)
        if refusal is not None:
            status, detail = refusal
            await _answer(send, status, detail)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for key, value in BASE_HEADERS.items():
                    if key not in out:
                        out[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        host = headers.get("host", "")
        name, _ = split_host(host)
        if not self.policy.listed(name):
            if not (self.policy.any_host and name and await self.tokens_on()):
                return 400, self._host_refused(host)
        if scope["method"] in WRITE_METHODS:
            origin = headers.get("origin")
            which = "Origin"
            if origin is None and "referer" in headers:
                origin, which = headers["referer"], "Referer"
            if origin is not None and not same_origin(origin, host):
                return 403, (
                    f"origin: {which} {origin!r} is not this server's (http://{host}); a page "
                    f"from another site may not change anything here. Send the request from "
                    f"the dashboard, or without an Origin/Referer (curl, the CLI)"
                )
        return None

    def _host_refused(self, host: str) -> str:
        shown = repr(host) if host else "(none)"
        extra = (
            f"; {SETTING}=* serves any host only while API tokens are on, and none exists"
            if self.policy.any_host
            else ""
        )
        return (
            f"host: Host {shown} is not served here: this server answers "
            f"{self.policy.describe()}. Add the name to {SETTING} (comma-separated) to serve "
            f"it{extra}"
        )


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in BASE_HEADERS.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
