"""CSV and JSON downloads of exactly the rows a report page shows.

Owns: ``/download/{report}.{csv|json}``, which takes the page's own query string (filters,
sort, page, page size; validated by ``parse_query`` exactly as the page is) and answers
that page's rows as a file, rendered by ``portwatch.render`` (the CLI's CSV and JSON, so a
download and ``portwatch report -f csv`` agree). The pages link here through the pager.

Must not touch: the store but through ``ReportService`` (same cache, same queries as the
page); anything but GET/HEAD (the app refuses other methods).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portwatch.render import to_csv, to_json
from portwatch.web.query import BadRequest, parse_query
from portwatch.web.service import ReportService
from schemas import REPORTS
from stream_processors.store import Report

FORMATS = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


def download_path(report: str, fmt: str) -> str:
    return f"/download/{report}.{fmt}"


def _handler(service: ReportService) -> Callable[[Request], Response]:
    def download(request: Request) -> Response:
        report, fmt = request.path_params["report"], request.path_params["fmt"]
        if report not in REPORTS or fmt not in FORMATS:
            return JSONResponse({"error": "no such download"}, status_code=404)
        try:
            query = parse_query(report, request.query_params.multi_items())
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        page = service.page(query)
        rows = [tuple(row[c] for c in page.columns) for row in page.rows]
        result = Report(report, page.columns, rows)
        body = to_csv(result) if fmt == "csv" else to_json(result)
        name = f"portwatch-{report}-page{query.page}.{fmt}"
        return Response(body, media_type=FORMATS[fmt],
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return download


def download_route(service: ReportService) -> Route:
    return Route("/download/{report}.{fmt}", _handler(service), methods=["GET", "HEAD"])


__all__ = ["FORMATS", "download_path", "download_route"]
