"""The web reports: ``portwatch serve``.

Four pages (Summary, List, Products, Ciphers) and a JSON API over the same report SQL
as the CLI (schemas/reports/*.sql, run by the store), with server-rendered SVG charts
and no script at all in the pages (the Content-Security-Policy forbids every script).

Owns: request validation (``query``), the report service with its result cache
(``service``), the SVG charts (``charts``), the Starlette app (``app``) and the
``serve`` command (``cli``). Must not write to the store or touch any network other
than the socket it listens on.
"""
