"""CORS for the HTTP API, opt-in (``ServerConfig.allowed_origins``): a web page served from another origin (a
browser chat UI calling ``fetch()``) may call the API only if the answers say its origin may read them. Off by
default: the server binds loopback, and without the setting no response carries a CORS header, as before.

``check_origins`` validates the setting; ``Cors`` answers preflights (its middleware, which needs no API key:
browsers never send credentials on a preflight) and adds Access-Control-Allow-Origin to every answer for an
allowed origin (its ``on_prepare`` hook, which also reaches a stream's headers and error answers)."""

from __future__ import annotations

import re

from aiohttp import web

from warmserve.controller import openai_api as oa
from warmserve.errors import InvalidArgumentError

#: Access-Control-Max-Age of a preflight's answer: how long a browser may reuse it, seconds (Starlette's default).
PREFLIGHT_MAX_AGE_S = 600
#: Access-Control-Allow-Headers when a preflight names none.
DEFAULT_ALLOW_HEADERS = "authorization, content-type"
#: Response headers a page's script may read beyond the CORS-safelisted ones: the request's id (``api.py``), a
#: refusal's Retry-After, a generation's Server-Timing.
EXPOSE_HEADERS = "x-request-id, retry-after, server-timing"
#: scheme://host[:port] as a browser's Origin header has it: no user, path, query or fragment; a bracketed IPv6 host.
_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[^\s/?#@\[\]:]+)(?::([0-9]{1,5}))?", re.IGNORECASE)
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_FORM = "scheme://host[:port] as a browser's Origin header sends it (http://localhost:3000), or \"*\" for any origin"


def normalize_origin(text: str) -> str | None:
    """``text`` as browsers serialize an origin (scheme and host lower case, no default port), or None if it is no
    scheme://host[:port]."""
    m = _ORIGIN.fullmatch(text)
    if m is None:
        return None
    scheme, host, port = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if port is not None and not 0 < int(port) <= 65535:
        return None
    keep = port is not None and _DEFAULT_PORTS.get(scheme) != port.lstrip("0")
    return f"{scheme}://{host}" + (f":{int(port)}" if keep else "")


def check_origins(value, where: str) -> tuple[str, ...]:
    """The allowed origins ``value`` (a list of them, or one string of comma-separated ones: the --allowed-origins
    flag's) normalized (``normalize_origin``), or InvalidArgumentError naming the entry that is no origin and the
    fix. A path refused rather than dropped: "http://host:3000/" would never match, the Origin header has none."""
    if isinstance(value, str):
        value = [o.strip() for o in value.split(",") if o.strip()]
    if not isinstance(value, (list, tuple)):
        raise InvalidArgumentError(f"{where} must be a list of origins ({_FORM}), got {value!r}",
                                   key="allowed_origins")
    out = []
    for i, origin in enumerate(value):
        if not isinstance(origin, str):
            raise InvalidArgumentError(f"{where}[{i}] must be a string, {_FORM}; got {origin!r}",
                                       key="allowed_origins", index=i)
        origin = origin.strip()
        if origin == "*":
            out.append(origin)
            continue
        normal = normalize_origin(origin)
        if normal is not None:
            out.append(normal)
            continue
        head = re.match(r"([a-z][a-z0-9+.-]*://[^/?#]+)[/?#]", origin, re.IGNORECASE)
        if head is not None and normalize_origin(head.group(1)) is not None:
            fix = f"drop the path: write {head.group(1)}"
        elif "://" not in origin:
            fix = f"give its scheme: write http://{origin} or https://{origin}"
        else:
            fix = f"write it as {_FORM}"
        raise InvalidArgumentError(f"{where}: {origin!r} is no origin (an origin is scheme://host[:port], with no "
                                   f"path, and a port in 1-65535): {fix}", key="allowed_origins", origin=origin)
    return tuple(out)


def is_preflight(request: web.Request) -> bool:
    """Whether ``request`` is a browser's CORS preflight: an OPTIONS with Origin and Access-Control-Request-Method."""
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


class Cors:
    """The CORS answers for the origins ``allowed_origins`` (``check_origins``'s form; "*": any origin)."""

    def __init__(self, allowed_origins):
        origins = check_origins(allowed_origins, "the allowed origins")
        self.any = "*" in origins
        self.origins = frozenset(origins)

    def allows(self, origin: str) -> bool:
        return self.any or normalize_origin(origin) in self.origins

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        """A preflight from an allowed origin on an existing path: 204 with the path's methods (no API key needed);
        from another origin: a 403 in OpenAI's error shape. A path that does not exist goes on to its 404."""
        if not is_preflight(request):
            return await handler(request)
        origin = request.headers["Origin"]
        if not self.allows(origin):
            body = oa.error_body(403, f"origin {origin!r} is not allowed to call this API from a browser: add it to "
                                      f"the server's allowed origins (--allowed-origins, or server.allowed_origins "
                                      f"in the config file)", code="origin_not_allowed")
            return web.Response(status=403, body=oa._enc.encode(body), content_type="application/json")
        # No route takes OPTIONS: on an existing path the router's answer is its 405, which lists the path's methods.
        refusal = request.match_info.http_exception
        if not isinstance(refusal, web.HTTPMethodNotAllowed):
            return await handler(request)
        asked = request.headers.get("Access-Control-Request-Headers", "").strip()
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": ", ".join(sorted(refusal.allowed_methods)),
            "Access-Control-Allow-Headers": asked or DEFAULT_ALLOW_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S), "Vary": "Access-Control-Request-Headers"})

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer as its headers go out (a stream's when it begins): Vary: Origin (the answer depends on it,
        so a cache must not hand one origin's to another), and for an allowed origin the origin echoed."""
        vary = response.headers.get("Vary", "")
        if "origin" not in vary.lower():
            response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
        origin = request.headers.get("Origin")
        if origin is None or not self.allows(origin):
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        if not is_preflight(request):
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
