"""A paginated JSON endpoint on membound's keyset pages, with the standard library only.

    python examples/paginated_api.py            # builds a demo SQLite file, serves, asks, stops
    python examples/paginated_api.py --serve    # serves on http://127.0.0.1:8000/events

``GET /events?size=20&after=TOKEN`` answers ``{"items": [...], "next": TOKEN, "previous":
TOKEN}``: 20 events newest first, ordered by ``ts`` with ``id`` as tie-breaker. ``next`` is null
on the last page and ``previous`` on the first; a client passes either back as ``after=``. A
damaged, forged or foreign token answers 400. Every request costs the same at any depth (the
table has an index on ``(ts, id)``), and the tokens are signed with ``MEMBOUND_TOKEN_SECRET``
(a demo secret is set when it is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlencode
from wsgiref.simple_server import WSGIRequestHandler, make_server

import membound

DEFAULT_SIZE = 20
MAX_SIZE = 100  # a client cannot ask for a page larger than this


def make_app(database_url: str):
    """A WSGI app serving ``/events``. One membound handle per request: sqlite3 connections
    are cheap to open; with a server database, adopt a pooled connection instead
    (``membound.connect(engine)``)."""

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/events":
            return respond(start_response, "404 Not Found", {"error": "try /events"})
        query = parse_qs(environ.get("QUERY_STRING", ""))
        after = query.get("after", [None])[0] or None
        try:
            size = min(int(query.get("size", [DEFAULT_SIZE])[0]), MAX_SIZE)
        except ValueError:
            return respond(start_response, "400 Bad Request", {"error": "size is a number"})
        with membound.connect(database_url, max_memory="32MB") as db:
            try:
                # A table, not a query: membound reads its key columns' NOT NULL from the
                # catalog, and the page is a plain index range (a query's key is taken as
                # nullable, and the NULL rule's SQL may not use the index).
                page = db.page(
                    "events",
                    key=("ts", "id"),
                    descending=True,
                    size=max(size, 1),
                    after=after,
                    row_factory="dict",
                )
            except membound.TokenError as exc:
                return respond(start_response, "400 Bad Request", {"error": str(exc)})
        body = {"items": page.rows, "next": page.next_token, "previous": page.previous_token}
        return respond(start_response, "200 OK", body)

    return app


def respond(start_response, status: str, body: dict) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def build_demo_database(path: Path, rows: int = 95) -> str:
    """A small ``events`` table with an index on the paging key; its URL."""
    url = f"sqlite:///{path}"
    with membound.connect(url) as db:
        db.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, "
            "kind TEXT NOT NULL, amount REAL)"
        )
        db.execute("CREATE INDEX events_ts_id ON events (ts, id)")
        # Every fifth event shares its timestamp with the one before: id breaks the tie.
        db.write(
            "events",
            (
                {
                    "id": i,
                    "ts": f"2024-05-01T12:{(i - i // 5) // 60:02d}:{(i - i // 5) % 60:02d}",
                    "kind": ("click", "view", "buy")[i % 3],
                    "amount": None if i % 4 == 0 else i / 4,
                }
                for i in range(1, rows + 1)
            ),
        )
    return url


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def get(base: str, **params: str) -> tuple[int, dict]:
    url = f"{base}/events?{urlencode(params)}"
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def demo() -> None:
    """Serve in a thread, walk every page forward and back as a client would, then stop."""
    with tempfile.TemporaryDirectory() as scratch:
        url = build_demo_database(Path(scratch) / "demo.db")
        server = make_server("127.0.0.1", 0, make_app(url), handler_class=QuietHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_port}"
        try:
            status, page = get(base, size="20")
            print(
                f"GET /events?size=20 -> {status}: {len(page['items'])} items, first "
                f"{page['items'][0]}, previous={page['previous']}"
            )
            pages = [page]
            while page["next"]:
                status, page = get(base, size="20", after=page["next"])
                pages.append(page)
            ids = [item["id"] for p in pages for item in p["items"]]
            print(
                f"walked {len(pages)} pages forward: {len(ids)} events, each once: "
                f"{sorted(ids) == list(range(1, 96))}; last page next={page['next']}"
            )
            status, back = get(base, size="20", after=page["previous"])
            print(
                f"previous of the last page -> the page before it: "
                f"{back['items'] == pages[-2]['items']}"
            )
            status, error = get(base, after=pages[1]["next"][:-3] + "xyz")
            print(f"a damaged token -> {status}: {error['error']}")
        finally:
            server.shutdown()
            server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="serve on 127.0.0.1:8000")
    parser.add_argument("--db", type=Path, default=Path("paginated_api_demo.db"))
    args = parser.parse_args()
    os.environ.setdefault("MEMBOUND_TOKEN_SECRET", "demo secret: set your own")
    if not args.serve:
        demo()
        return
    if not args.db.exists():
        build_demo_database(args.db.resolve())
    url = f"sqlite:///{args.db.resolve()}"
    print("serving http://127.0.0.1:8000/events (Ctrl-C stops)")
    with make_server("127.0.0.1", 8000, make_app(url)) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
