"""The web site's application server: HTTP/1.1 from the front, queries to PostgreSQL.

An application inside a guest, not a vnet service: one asyncio loop, kept-alive
connections from nginx, a small asyncpg pool to the database guest. Pages
follow TPC-W's browsing mix (home, item detail, search, best sellers, buy);
each is a few KB of HTML pointing at the image server's images, so the front
fetches bytes from both tiers. On start it loads the catalogue into an empty
database, then prints one ready line on stdout; SIGTERM ends it cleanly.
"""

from __future__ import annotations

import asyncio
import html
import json
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from services.workloads import webconf
from services.workloads.webconf import Catalogue

HEAD_LIMIT = 16 * 1024
BODY_LIMIT = 1024 * 1024
DB_RETRY_S = 0.2
POOL_CLOSE_S = 5.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS authors (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id int PRIMARY KEY, title text NOT NULL, author_id int NOT NULL REFERENCES authors,
    subject text NOT NULL, price numeric(8, 2) NOT NULL, stock int NOT NULL,
    image text NOT NULL, description text NOT NULL);
CREATE INDEX IF NOT EXISTS items_subject ON items (subject, id);
CREATE TABLE IF NOT EXISTS customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    id bigserial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
    item_id int NOT NULL REFERENCES items, qty int NOT NULL,
    created timestamptz NOT NULL DEFAULT now());
"""

Q_HOME = "SELECT id, title, price, image FROM items WHERE id = ANY($1::int[]) ORDER BY id"
Q_ITEM = """SELECT i.title, a.name, i.subject, i.price, i.stock, i.image, i.description
            FROM items i JOIN authors a ON a.id = i.author_id WHERE i.id = $1"""
Q_RELATED = "SELECT id, title FROM items WHERE subject = $1 AND id <> $2 ORDER BY id LIMIT 5"
Q_SEARCH = "SELECT id, title, price, image FROM items WHERE title LIKE $1 ORDER BY id LIMIT 20"
# TPC-W's best sellers: the most sold items among the latest orders.
Q_BEST = """SELECT i.id, i.title, a.name, sum(o.qty) AS sold
            FROM orders o JOIN items i ON i.id = o.item_id JOIN authors a ON a.id = i.author_id
            WHERE o.id > (SELECT coalesce(max(id), 0) - 1000 FROM orders)
            GROUP BY i.id, i.title, a.name ORDER BY sold DESC, i.id LIMIT 10"""
Q_BUY_STOCK = """UPDATE items SET stock = CASE WHEN stock > $2 THEN stock - $2 ELSE stock + 100 END
                 WHERE id = $1 RETURNING title, price, stock"""
Q_BUY_ORDER = "INSERT INTO orders (customer_id, item_id, qty) VALUES ($1, $2, $3) RETURNING id"

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class BadRequest(ValueError):
    """The request cannot be read; the connection is answered 400 and closed."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    keep_alive: bool
    content_length: int


def parse_head(head: bytes) -> Request:
    """Read a request line and headers (up to and including the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # latin-1 decodes any byte; kept for clarity
        raise BadRequest("undecodable request head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {lines[0][:80]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise BadRequest(f"bad content-length {headers['content-length'][:20]!r}") from exc
    if length < 0:
        raise BadRequest(f"bad content-length {length}")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest("chunked request bodies are not supported")
    url = urlsplit(target)
    return Request(method=method, path=unquote(url.path), query=parse_qs(url.query),
                   keep_alive=keep_alive, content_length=length)


def response(status: int, body: bytes, keep_alive: bool,
             content_type: str = "text/html; charset=utf-8") -> bytes:
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode("latin-1") + body


def page(title: str, body: str) -> bytes:
    """A shop page: header, navigation, body, footer (a few KB, as TPC-W's are)."""
    nav = " | ".join(f'<a href="/app/search?q={w}">{w}</a>' for w in webconf.WORDS[:12])
    return (f"<!doctype html><html><head><title>{html.escape(title)}</title></head>"
            f"<body><header><h1>vnet books</h1><nav>{nav}</nav></header>"
            f"<main><h2>{html.escape(title)}</h2>{body}</main>"
            "<footer>a TPC-W-like test site served over vnet</footer></body></html>"
            ).encode()


def _item_list(rows: list[Any]) -> str:
    return "<ul>" + "".join(
        f'<li><a href="/app/item/{r["id"]}">{html.escape(r["title"])}</a> ${r["price"]}'
        f' <img src="{r["image"]}" alt=""></li>' for r in rows) + "</ul>"


def _title(rng: random.Random) -> str:
    return " ".join(rng.choice(webconf.WORDS) for _ in range(rng.randint(2, 4))).title()


async def populate(conn: Any, catalogue: Catalogue, seed: int = 11) -> bool:
    """Create the schema and load the catalogue into an empty database; False if it
    was loaded already (an app server restarted on the same database)."""
    await conn.execute(SCHEMA)
    if await conn.fetchval("SELECT count(*) FROM items"):
        return False
    rng = random.Random(seed)
    async with conn.transaction():
        await conn.copy_records_to_table("authors", records=[
            (a, f"{rng.choice(webconf.WORDS).title()} {rng.choice(webconf.WORDS).title()}son")
            for a in range(1, catalogue.authors + 1)])
        await conn.copy_records_to_table("items", records=[
            (i, _title(rng), rng.randint(1, catalogue.authors), rng.choice(webconf.SUBJECTS),
             round(rng.uniform(3, 90), 2), rng.randint(10, 500), webconf.image_of_item(i),
             " ".join(rng.choice(webconf.WORDS) for _ in range(40)))
            for i in range(1, catalogue.items + 1)])
        await conn.copy_records_to_table("customers", records=[
            (c, f"customer {c}") for c in range(1, catalogue.customers + 1)])
        await conn.copy_records_to_table(
            "orders", columns=["customer_id", "item_id", "qty"], records=[
                (rng.randint(1, catalogue.customers), rng.randint(1, catalogue.items),
                 rng.randint(1, 3)) for _ in range(catalogue.orders)])
    await conn.execute("ANALYZE")
    return True


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class Shop:
    """The pages: each takes the request and returns (status, body)."""

    def __init__(self, pool: Any, catalogue: Catalogue, seed: int = 3) -> None:
        self.pool = pool
        self.catalogue = catalogue
        self.rng = random.Random(seed)
        self.stats = Stats()

    async def handle(self, req: Request) -> tuple[int, bytes]:
        if req.method not in ("GET", "HEAD", "POST"):
            return 405, page("method not allowed", "")
        parts = [p for p in req.path.split("/") if p]
        if len(parts) < 2 or parts[0] != "app":
            return 404, page("not found", "")
        name, args = parts[1], parts[2:]
        self.stats.requests[name] += 1
        try:
            return await self._route(name, args, req)
        except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
            self.stats.errors[type(exc).__name__] += 1
            print(json.dumps({"event": "database error", "page": name, "error": str(exc)}),
                  file=sys.stderr, flush=True)
            return 503, page("database unavailable", "")

    async def _route(self, name: str, args: list[str], req: Request) -> tuple[int, bytes]:
        if name == "health":
            await self.pool.fetchval("SELECT 1")
            return 200, b"ok\n"
        if name == "home":
            return 200, await self.home()
        if name == "best":
            return 200, await self.best()
        if name == "search":
            return 200, await self.search(req.query.get("q", [""])[0])
        if name in ("item", "buy") and len(args) == 1 and args[0].isdigit():
            item = int(args[0])
            if not 1 <= item <= self.catalogue.items:
                return 404, page(f"no item {item}", "")
            return 200, await (self.item(item) if name == "item" else self.buy(item))
        return 404, page("not found", "")

    async def home(self) -> bytes:
        ids = [self.rng.randint(1, self.catalogue.items) for _ in range(5)]
        rows = await self.pool.fetch(Q_HOME, ids)
        return page("Welcome", "<p>Promotions today:</p>" + _item_list(rows))

    async def item(self, item: int) -> bytes:
        async with self.pool.acquire() as conn:
            r = await conn.fetchrow(Q_ITEM, item)
            related = await conn.fetch(Q_RELATED, r["subject"], item)
        body = (f'<img src="{r["image"]}" alt=""><p>by {html.escape(r["name"])}, '
                f'{r["subject"]}, ${r["price"]}, {r["stock"]} in stock</p>'
                f'<p>{html.escape(r["description"])}</p><h3>Related</h3><ul>' +
                "".join(f'<li><a href="/app/item/{x["id"]}">{html.escape(x["title"])}</a></li>'
                        for x in related) + "</ul>")
        return page(r["title"], body)

    async def search(self, word: str) -> bytes:
        rows = await self.pool.fetch(Q_SEARCH, f"%{word.title()}%")
        return page(f"Search: {word}", f"<p>{len(rows)} found</p>" + _item_list(rows))

    async def best(self) -> bytes:
        rows = await self.pool.fetch(Q_BEST)
        return page("Best sellers", "<ol>" + "".join(
            f'<li><a href="/app/item/{r["id"]}">{html.escape(r["title"])}</a> by '
            f'{html.escape(r["name"])}: {r["sold"]} sold</li>' for r in rows) + "</ol>")

    async def buy(self, item: int) -> bytes:
        customer = self.rng.randint(1, self.catalogue.customers)
        qty = self.rng.randint(1, 3)
        async with self.pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow(Q_BUY_STOCK, item, qty)
            order = await conn.fetchval(Q_BUY_ORDER, customer, item, qty)
        return page("Order confirmed", f"<p>Order {order}: {qty} x {html.escape(r['title'])}"
                                       f" at ${r['price']}; {r['stock']} left.</p>")


async def serve_connection(shop: Shop, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    """Answer requests on one kept-alive connection until the peer closes it."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            try:
                req = parse_head(head)
                if req.content_length > BODY_LIMIT:
                    raise BadRequest(f"body of {req.content_length} bytes is over the limit")
            except BadRequest as exc:
                shop.stats.errors["bad request"] += 1
                writer.write(response(400, f"{exc}\n".encode(), False, "text/plain"))
                await writer.drain()
                return
            if req.content_length:
                await reader.readexactly(req.content_length)
            status, body = await shop.handle(req)
            out = response(status, body, req.keep_alive)
            writer.write(out if req.method != "HEAD" else out[:len(out) - len(body)])
            await writer.drain()
            if not req.keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return  # the front went away mid-request (a client's run ended): nothing to answer
    finally:
        writer.close()


@dataclass(frozen=True)
class AppParams:
    listen: str                # ip:port
    db: str                    # ip:port of PostgreSQL
    guest: str = "app"
    catalogue: Catalogue = field(default_factory=Catalogue)
    pool_size: int = 8
    db_timeout_s: float = 30.0  # the database must answer within this at start


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} is not ip:port")
    return host, int(port)


async def _connect_pool(params: AppParams) -> Any:
    """The pool, retrying until the database listens (it may start after us)."""
    host, port = _split(params.db)
    deadline = time.monotonic() + params.db_timeout_s
    while True:
        try:
            return await asyncpg.create_pool(
                host=host, port=port, user=webconf.DB_USER, database=webconf.DB_NAME,
                min_size=1, max_size=params.pool_size, timeout=5.0)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"database at {params.db} not reachable within "
                                   f"{params.db_timeout_s:g}s: {exc}") from exc
            await asyncio.sleep(DB_RETRY_S)


async def run(params: AppParams) -> dict[str, Any]:
    """Serve until SIGTERM or SIGINT; return the request and error counts."""
    params.catalogue.check()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = await _connect_pool(params)
    try:
        async with pool.acquire() as conn:
            loaded = await populate(conn, params.catalogue)
        shop = Shop(pool, params.catalogue)
        host, port = _split(params.listen)
        server = await asyncio.start_server(
            lambda r, w: serve_connection(shop, r, w), host, port, limit=HEAD_LIMIT,
            reuse_address=True)
        print(json.dumps({"ready": True, "listen": params.listen, "loaded": loaded}),
              flush=True)
        await stop.wait()
        # Not wait_closed(): the front's kept-alive connections would hold it open.
        server.close()
    finally:
        try:
            await asyncio.wait_for(pool.close(), POOL_CLOSE_S)
        except TimeoutError:
            pool.terminate()
    return {"guest": params.guest, "requests": dict(shop.stats.requests),
            "errors": dict(shop.stats.errors)}
