"""The Starlette app: four report pages, the JSON API, static assets, security headers.

Owns: routing, rendering (Jinja2 with autoescape on: every value that came from the
network, banners, products, certificate fields, hostnames, is escaped), authentication
by token when the server listens beyond loopback, the Host-header check that keeps DNS
rebinding away from a loopback-only server, and the security headers (a
Content-Security-Policy that allows no script at all, inline or not).

A bad filter value is a 400 with the reason (``query.BadRequest``), never a 500.

Must not write to the store or reach any network.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from starlette.responses import Response as StarletteResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from portwatch.render import jsonable
from portwatch.web import charts, history_pages
from portwatch.web.query import (
    COLORS,
    CONTROL,
    DIRECTIONS,
    GRADES,
    HIDDEN_FILTERS,
    IGNORED,
    LIST_SORTS,
    PAGE_SIZES,
    PREVALENCE,
    BadRequest,
    ReportQuery,
    filter_names,
    parse_query,
)
from portwatch.web.service import Page, ReportService
from schemas import REPORTS
from schemas.records import RecordError, normalize_ip

log = logging.getLogger("portwatch.web")

COOKIE = "portwatch_token"
CSP = ("default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
PAGE_PATHS = {"summary": "/", "list": "/list", "products": "/products", "ciphers": "/ciphers"}
# The Products page's filters its counts carry into the List they open (the product and
# version are the row's own): the List counts what the row counted.
DRILL_FILTERS = frozenset({"org", "target", "color", "port"})
PAGE_TITLES = {"summary": "Summary", "list": "Open ports", "products": "Products",
               "ciphers": "TLS ciphers"}
SORT_LABELS = {"target": "Target", "organization": "Organization", "port": "Port",
               "service": "Service", "product": "Product", "risk": "Risk",
               "prevalence": "Prevalence", "first_seen": "First detected",
               "last_seen": "Last seen"}
FILTER_LABELS = {"org": "Organization", "target": "Target", "exact_target": "Target",
                 "ip": "Address",
                 "proto": "Protocol", "color": "Risk colour",
                 "port": "Port", "product": "Product", "version": "Version",
                 "prevalence": "Prevalence", "grade": "TLS grade", "history": "History"}
COLOR_WORDS = {"red": "red", "yellow": "yellow", "green": "green"}
STATIC_DIR = Path(str(resources.files("portwatch.web").joinpath("static")))


# -- values for people and programs ---------------------------------------------------


def when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return "" if value is None else str(value)


def when_iso(value: Any) -> str:
    return str(jsonable("", value)) if isinstance(value, datetime) else ""


def number(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def score(value: Any) -> str:
    try:
        return f"{float(value):.1f}"
    except (TypeError, ValueError):
        return ""


# Unicode categories a page never prints as they are: controls (ESC, NUL, BEL...),
# format characters (the bidi overrides U+202A-202E and isolates U+2066-2069, which
# make "CN=www.bank\u202emoc.evil" read "CN=www.banklive.com"), surrogates, private
# use, unassigned, line and paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def visible(value: Any) -> Any:
    """Every value a page prints (Jinja's ``finalize``, before autoescaping): what a
    scanned server sent may carry characters that reorder or hide the text around them;
    each is shown as ``\\uXXXX`` instead (newline and tab kept: banners have lines), as
    the terminal's ``render.sanitize_text`` does. Markup (ours) passes as it is."""
    if not isinstance(value, str) or isinstance(value, Markup) or value.isprintable():
        return value
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch) not in _HIDDEN
                   else f"\\u{ord(ch):04x}" for ch in value)


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("portwatch.web", "templates"),
                      autoescape=select_autoescape(["html", "svg"], default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      finalize=visible)
    env.filters.update(when=when, when_iso=when_iso, number=number, score=score)
    env.globals.update(COLORS=COLORS, PREVALENCE=PREVALENCE, GRADES=GRADES,
                       PAGE_SIZES=PAGE_SIZES, PAGE_PATHS=PAGE_PATHS, PAGE_TITLES=PAGE_TITLES,
                       SORT_LABELS=SORT_LABELS, FILTER_LABELS=FILTER_LABELS,
                       HIDDEN_FILTERS=HIDDEN_FILTERS,
                       LIST_SORTS=LIST_SORTS, DIRECTIONS=DIRECTIONS)
    return env


# -- security middleware --------------------------------------------------------------


def with_security_headers(response: StarletteResponse) -> StarletteResponse:
    """The headers every response carries, 500 pages included: Starlette builds those
    outside the middleware stack, so ``Guard`` never sees them (issue 11, defect 10)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def is_served_over_tls(request: Request, *, cookie_secure: bool,
                       trusted_proxies: frozenset[str]) -> bool:
    """Whether the browser reached us over TLS: directly (https), by configuration
    (``--cookie-secure``), or as told by ``X-Forwarded-Proto`` from a trusted proxy
    (only from one: anyone else could claim it)."""
    if cookie_secure or request.url.scheme == "https":
        return True
    client = request.client.host if request.client else ""
    with contextlib.suppress(RecordError):
        # a dual-stack socket (--host ::) reports an IPv4 proxy as ::ffff:a.b.c.d: never
        # equal to the --trusted-proxy given (a review)
        client = normalize_ip(client)
    if client and client in trusted_proxies:
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return proto == "https"
    return False


def _query_is_utf8(raw: bytes) -> bool:
    """Every name and value of the query string decodes as UTF-8."""
    if b"%" not in raw and raw.isascii():
        return True
    try:  # raw bytes past ASCII, and percent-encoded ones
        parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return False
    return True


class Guard(BaseHTTPMiddleware):
    """Host check (loopback mode), token check (token mode), security headers."""

    def __init__(self, app: Any, *, token: str, allowed_hosts: frozenset[str],
                 cookie_secure: bool = False,
                 trusted_proxies: frozenset[str] = frozenset()) -> None:
        super().__init__(app)
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.cookie_secure = cookie_secure
        self.trusted_proxies = trusted_proxies

    def _has_token(self, request: Request) -> bool:
        given = ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        given = given or request.cookies.get(COOKIE, "")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    async def dispatch(self, request: Request,
                       call_next: Callable[[Request], Awaitable[StarletteResponse]],
                       ) -> StarletteResponse:
        return with_security_headers(await self._guarded(request, call_next))

    async def _guarded(self, request: Request,
                       call_next: Callable[[Request], Awaitable[StarletteResponse]],
                       ) -> StarletteResponse:
        # /healthz reveals nothing: probes (Kubernetes' use the pod IP) need no Host match.
        if self.allowed_hosts and request.url.path != "/healthz":
            host = request.headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.lower() not in self.allowed_hosts:
                names = ", ".join(sorted(self.allowed_hosts))
                return PlainTextResponse(f"portwatch: Host header refused; this server "
                                         f"answers to {names} only (serve --allowed-host "
                                         f"adds a name)\n", status_code=421)
        if not _query_is_utf8(request.scope.get("query_string", b"")):
            # Starlette reads %FF as U+FFFD: "target=%FF" filtered on a character nobody
            # typed and answered 200, empty (a review, 2026-12-06)
            message = "portwatch: a query value is not UTF-8 (its percent-encoded bytes)"
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": message}, status_code=400)
            return PlainTextResponse(message + "\n", status_code=400)
        if not self.token or request.url.path in ("/healthz",) \
                or request.url.path.startswith("/static/"):
            return await call_next(request)
        offered = request.query_params.get("token", "")
        if offered and hmac.compare_digest(offered.encode(), self.token.encode()):
            # First visit with ?token=: keep it in an HttpOnly cookie, drop it from the URL
            # (so it does not linger in history, logs or Referer headers).
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            # One leading slash: "//evil.example/x" (or "/\\evil...") would send the browser
            # to another site; a path with one leading slash stays on this host
            path = "/" + request.url.path.lstrip("/\\")
            target = path + (f"?{urlencode(rest)}" if rest else "")
            redirect = RedirectResponse(target, status_code=303)
            secure = is_served_over_tls(request, cookie_secure=self.cookie_secure,
                                        trusted_proxies=self.trusted_proxies)
            redirect.set_cookie(COOKIE, self.token, httponly=True, samesite="strict",
                                secure=secure, path="/")
            return redirect
        if not self._has_token(request):
            message = ("portwatch: a token is required (Authorization: Bearer <token>, "
                       "or open the page once with ?token=<token>)")
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": message}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            return PlainTextResponse(message + "\n", status_code=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)


# -- the app --------------------------------------------------------------------------


class WebApp:
    """Handlers bound to one report service and one template environment."""

    def __init__(self, service: ReportService) -> None:
        self.service = service
        self.env = _environment()

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status)

    def error_page(self, status: int, message: str, report: str = "") -> HTMLResponse:
        return self.render("error.html", status=status, status_code=status,
                           reason=HTTPStatus(status).phrase, message=message,
                           active=report, page_title=HTTPStatus(status).phrase)

    def _common(self, query: ReportQuery, page: Page) -> dict[str, Any]:
        def link(path: str | None = None, **overrides: Any) -> str:
            params = query.link_params(**overrides)
            base = path or PAGE_PATHS[query.report]
            return base + (f"?{urlencode(params)}" if params else "")

        return {"q": query, "page": page, "rows": page.rows, "link": link,
                "active": query.report, "page_title": PAGE_TITLES[query.report],
                "filter_names": filter_names(query.report),
                "organizations": self.service.organizations(),
                "generated": datetime.now(UTC)}

    def report_page(self, report: str) -> Callable[[Request], HTMLResponse]:
        def handler(request: Request) -> HTMLResponse:
            try:
                query = parse_query(report, request.query_params.multi_items())
            except BadRequest as exc:
                return self.error_page(400, str(exc), report)
            if report == "summary":
                page, totals = self.service.summary_page(query)
            else:
                page = self.service.page(query)
            context = self._common(query, page)
            if report == "summary":
                context["colour_chart"] = charts.colour_bars(totals)
                context["totals"] = totals
                context["risk_chart"] = charts.risk_line(
                    self.service.risk_history(query.filters, days=90))
            if report == "products":  # its counts open the List with the same filters
                context["drill_filters"] = {
                    k: v for k, v in query.link_params().items()
                    if k in DRILL_FILTERS}
            return self.render(f"{report}.html", **context)

        return handler

    def api(self, request: Request) -> JSONResponse:
        report = request.path_params["report"]
        if report not in REPORTS:  # no such endpoint: a 404 as elsewhere, with the choice
            return JSONResponse({"error": f"unknown report {report[:40]!r}: choose one of "
                                          f"{', '.join(REPORTS)}"}, status_code=404)
        try:
            query = parse_query(report, request.query_params.multi_items(), is_api=True)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        page = self.service.page(query)
        rows = [{c: jsonable(c, v) for c, v in row.items()} for row in page.rows]
        return JSONResponse({
            "report": report, "filters": dict(query.filters),
            "sort": query.sort or ("target" if report == "list" else ""),
            "direction": query.direction, "page": query.page, "per_page": query.per_page,
            "total": page.total, "pages": page.pages, "columns": list(page.columns),
            "rows": rows,
        })

    def api_index(self, request: Request) -> JSONResponse:
        unknown = sorted({k for k, _v in request.query_params.multi_items()} - IGNORED)
        if unknown:
            return JSONResponse({"error": f"/api/v1 takes no parameter; got {unknown[0][:40]!r}"},
                                status_code=400)
        reports = {name: {"path": f"/api/v1/{name}", "filters": list(filter_names(name)),
                          "sort": list(LIST_SORTS) if name == "list" else [],
                          "paging": ["page", "per_page"]}
                   for name in REPORTS}
        # the What-changed report: newest first, at most `limit` events (no pages)
        reports["changes"] = {"path": "/api/v1/changes",
                              "filters": list(history_pages.API_FILTERS),
                              "sort": [], "paging": ["limit"]}
        return JSONResponse({"reports": reports})

    def summary_chart_data(self, request: Request) -> JSONResponse:
        pairs = request.query_params.multi_items()
        try:
            paging = sorted({name for name, _value in pairs} & CONTROL)
            if paging:  # the charts cover every matching target: no page, no order
                raise BadRequest(f"the summary charts take filters only, not {paging[0]}")
            query = parse_query("summary", pairs, is_api=True)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        totals = self.service.colour_totals(query.filters)
        history = self.service.risk_history(query.filters, days=90)
        return JSONResponse({
            "colours": {"red": totals.red, "yellow": totals.yellow, "green": totals.green,
                        "cdn_expected": totals.cdn_expected,
                        "unconfirmed": totals.unconfirmed, "targets": totals.targets},
            "risk_over_time": [{"day": p.day.isoformat(), "average": p.average,
                                "worst": p.worst, "targets": p.targets} for p in history]})


def create_app(service: ReportService, *, token: str = "",
               loopback_only: bool = True, extra_hosts: frozenset[str] = frozenset(),
               cookie_secure: bool = False, trusted_proxies: frozenset[str] = frozenset(),
               ) -> Starlette:
    """The ASGI app. ``loopback_only`` refuses Host headers that are not loopback names or
    ``extra_hosts``; with a token, ``extra_hosts`` (when given) turns the same check on.
    ``cookie_secure`` / ``trusted_proxies`` decide the token cookie's Secure flag."""
    from portwatch.web.downloads import download_route

    web = WebApp(service)

    async def not_found(request: Request, exc: Exception) -> StarletteResponse:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "no such endpoint"}, status_code=404)
        return web.error_page(404, "There is no page here.")

    async def method_not_allowed(request: Request, exc: Exception) -> StarletteResponse:
        return PlainTextResponse("read-only: GET and HEAD only\n", status_code=405,
                                 headers={"Allow": "GET, HEAD"})

    async def server_error(request: Request, exc: Exception) -> StarletteResponse:
        log.exception("error serving %s", request.url.path, exc_info=exc)
        if request.url.path.startswith("/api/"):
            return with_security_headers(JSONResponse(
                {"error": "internal error (see the server log)"}, status_code=500))
        return with_security_headers(web.error_page(
            500, "Something went wrong reading the store; the server log has the details."))

    async def healthz(request: Request) -> PlainTextResponse:  # never in the thread pool
        return PlainTextResponse("ok\n")

    async def favicon(request: Request) -> StarletteResponse:
        return RedirectResponse("/static/favicon.svg", status_code=308)

    routes: list[BaseRoute] = [Route(path, web.report_page(name), methods=["GET", "HEAD"])
              for name, path in PAGE_PATHS.items()]
    routes += [
        Route("/api/v1", web.api_index, methods=["GET", "HEAD"]),
        Route("/api/v1/summary/charts", web.summary_chart_data, methods=["GET", "HEAD"]),
        history_pages.api_route(web),  # /api/v1/changes, ahead of the reports' catch-all
        Route("/api/v1/{report}", web.api, methods=["GET", "HEAD"]),
        download_route(service),  # portwatch/web/downloads.py: the page's rows as CSV/JSON
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/favicon.ico", favicon, methods=["GET", "HEAD"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    routes += history_pages.routes(web)  # /changes, /target
    allowed = (LOOPBACK_HOSTS | extra_hosts) if loopback_only or extra_hosts else frozenset()
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=token, allowed_hosts=allowed,
                               cookie_secure=cookie_secure, trusted_proxies=trusted_proxies)],
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
    )
    # /list/ is no page (a 404), not a redirect: Starlette's built an absolute http://
    # URL from the request's Host, which sent a browser behind a TLS proxy to plain http
    # (its Secure cookie unsent) and echoed any Host in token mode (a review)
    app.router.redirect_slashes = False
    return app


__all__ = ["Markup", "create_app", "is_served_over_tls", "jsonable", "with_security_headers"]
