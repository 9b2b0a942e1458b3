"""The web site's fixed parts as text and data: configs, the catalogue, the images, the mix.

The multi-tier web site after the original's TPC-W analogue: a front (nginx)
proxies /app/ to the application server and /img/ to the image server (a
second nginx); the application server queries PostgreSQL; wrk drives a mix of
pages and images. Everything here is pure (no processes, no sockets) so the
launcher, the application server and the load client build the same site from
the same constants, and tests can read what they build.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from pathlib import Path

APP = "web"                  # AppReport.app and the topic app.web.<guest>
FRONT_PORT = 80
APP_PORT = 8000
IMG_PORT = 80
DB_PORT = 5432
DB_USER = "postgres"
DB_NAME = "postgres"
NGINX_USER = "www-data"      # nginx's workers drop to this user (Debian's base-passwd has it)
HEALTH_PATH = "/app/health"  # a page that goes through front, app and db

# Images: a few sizes (KB), several of each; small ones are asked for more often,
# as thumbnails are on a shop's pages. The image server carries the bulk bytes.
IMAGE_SIZES_KB = (10, 25, 50, 100, 200)
IMAGE_WEIGHTS = (8, 6, 4, 2, 1)
IMAGE_VARIANTS = 4

# Words for titles and searches (the client searches for the same words).
WORDS = (
    "river", "stone", "glass", "winter", "garden", "silent", "iron", "paper", "north",
    "harbour", "copper", "lantern", "orchard", "shadow", "summer", "valley", "violet",
    "thunder", "amber", "falcon", "meadow", "cedar", "ember", "quiet", "salt", "tide",
    "marble", "willow", "crimson", "hollow",
)
SUBJECTS = ("arts", "biographies", "business", "children", "computers", "cooking",
            "history", "mystery", "poetry", "science", "travel", "youth")

# The page mix within the page share (TPC-W's browsing mix, roughly): name -> weight.
PAGE_MIX = (("home", 30), ("item", 25), ("search", 20), ("best", 15), ("buy", 10))


@dataclass(frozen=True)
class Catalogue:
    """How big the database is: TPC-W's scale factors, small."""

    items: int = 1000
    authors: int = 250
    customers: int = 200
    orders: int = 2000   # pre-loaded, so the best-sellers query has history to scan

    def check(self) -> None:
        for name in ("items", "authors", "customers"):
            if getattr(self, name) < 1:
                raise ValueError(f"catalogue needs at least one of {name} (got "
                                 f"{getattr(self, name)})")
        if self.orders < 0:
            raise ValueError(f"orders must be >= 0 (got {self.orders})")


def image_names() -> list[tuple[str, int]]:
    """Every image's file name and size in bytes, smallest first."""
    return [(f"{kb}k-{v}.jpg", kb * 1024)
            for kb in IMAGE_SIZES_KB for v in range(IMAGE_VARIANTS)]


def image_of_item(item: int) -> str:
    """The thumbnail an item's pages show (its URL path)."""
    names = image_names()
    return f"/img/{names[item % len(names)][0]}"


def write_images(root: Path, seed: int = 7) -> int:
    """Write the images under root/img/ (incompressible bytes behind a JPEG marker);
    return the total bytes written."""
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    total = 0
    for name, size in image_names():
        data = b"\xff\xd8\xff\xe0" + rng.randbytes(size - 6) + b"\xff\xd9"
        (root / "img" / name).write_bytes(data)
        total += len(data)
    return total


def subnet(ip: str, prefix_len: int) -> str:
    """The guests' subnet, e.g. 10.10.0.0/24, for PostgreSQL's access rules."""
    return str(ipaddress.ip_interface(f"{bare_ip(ip)}/{prefix_len}").network)


def bare_ip(ip: str) -> str:
    """An address without a /prefix, whichever way the testbed gave it."""
    return ip.split("/", 1)[0]


def _nginx_head(prefix: Path) -> str:
    """What both nginx instances share: one worker, files under prefix, no daemon,
    errors on stderr (the launcher's log file for the tier)."""
    return f"""daemon off;
user {NGINX_USER} {NGINX_USER};
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
"""


def _http_common(prefix: Path) -> str:
    temp = prefix / "temp"
    return f"""    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
"""


def nginx_front_conf(prefix: Path, listen_ip: str, app_ip: str, img_ip: str) -> str:
    """The web front: /app/ to the application server, /img/ to the image server,
    over kept-alive upstream connections (as a real front would)."""
    return _nginx_head(prefix) + f"""http {{
{_http_common(prefix)}
    upstream app {{ server {bare_ip(app_ip)}:{APP_PORT}; keepalive 32; }}
    upstream img {{ server {bare_ip(img_ip)}:{IMG_PORT}; keepalive 32; }}
    server {{
        listen {bare_ip(listen_ip)}:{FRONT_PORT};
        location /app/ {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location /img/ {{
            proxy_pass http://img;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
        location = /front/health {{ return 200 "ok\\n"; }}
    }}
}}
"""


def nginx_img_conf(prefix: Path, listen_ip: str, root: Path) -> str:
    """The image server: static files from root/img/."""
    return _nginx_head(prefix) + f"""http {{
{_http_common(prefix)}
    sendfile on;
    tcp_nopush on;
    types {{ image/jpeg jpg; }}
    server {{
        listen {bare_ip(listen_ip)}:{IMG_PORT};
        root {root};
        location /img/ {{ }}
    }}
}}
"""


def pg_hba(guest_subnet: str) -> str:
    """Trust the guests' subnet: the database lives in a throwaway test site."""
    return ("local all all trust\n"
            f"host all all {guest_subnet} trust\n"
            "host all all 127.0.0.1/32 trust\n")


def postgres_settings(listen_ip: str, socket_dir: Path) -> list[str]:
    """`postgres -c` settings: listen on the guest only, small, and fast over safe
    (the data is thrown away at the end)."""
    settings = {
        "listen_addresses": bare_ip(listen_ip), "port": str(DB_PORT),
        "unix_socket_directories": str(socket_dir), "max_connections": "40",
        "shared_buffers": "32MB", "fsync": "off", "synchronous_commit": "off",
        "full_page_writes": "off", "logging_collector": "off", "log_connections": "off",
    }
    out: list[str] = []
    for key, value in settings.items():
        out += ["-c", f"{key}={value}"]
    return out


def wrk_script(items: int, image_share: float) -> str:
    """The wrk Lua script: each request is a page (app + db) or an image, by share.

    init() seeds from the script arguments (the client gives each run a new
    seed); done() prints one JSON line the client reads (wrk's own summary
    comes before it on stdout).
    """
    if not 0.0 <= image_share <= 1.0:
        raise ValueError(f"image_share must be within 0..1 (got {image_share})")
    if items < 1:
        raise ValueError(f"items must be >= 1 (got {items})")
    pages = ", ".join(f'{{"{name}", {weight}}}' for name, weight in PAGE_MIX)
    images = ", ".join(f'{{"/img/{name}", {w}}}' for (name, _), w in
                       zip(image_names(), _image_weights(), strict=True))
    words = ", ".join(f'"{w}"' for w in WORDS)
    return f"""-- generated by services/workloads/webconf.py
local items = {items}
local image_share = {image_share!r}
local pages = {{{pages}}}
local images = {{{images}}}
local words = {{{words}}}

local function total(t)
  local s = 0
  for _, e in ipairs(t) do s = s + e[2] end
  return s
end
local page_total, image_total = total(pages), total(images)

local function pick(t, sum)
  local r = math.random() * sum
  for _, e in ipairs(t) do
    r = r - e[2]
    if r <= 0 then return e[1] end
  end
  return t[#t][1]
end

local thread_id = 0
function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  local seed = tonumber(args[1]) or 1
  math.randomseed(seed * 1000 + (id or 0))
end

local function page()
  local kind = pick(pages, page_total)
  if kind == "home" then return "/app/home" end
  if kind == "item" then return "/app/item/" .. math.random(items) end
  if kind == "search" then return "/app/search?q=" .. words[math.random(#words)] end
  if kind == "best" then return "/app/best" end
  return "/app/buy/" .. math.random(items)
end

function request()
  local path
  if math.random() < image_share then path = pick(images, image_total) else path = page() end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  local mean, p99 = 0, 0
  if summary.requests > 0 then mean, p99 = latency.mean, latency:percentile(99) end
  io.write(string.format(
    '{{"wrk": 1, "requests": %d, "bytes": %d, "duration_us": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "latency_mean_us": %.1f, ' ..
    '"latency_p99_us": %d}}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, mean, p99))
end
"""


def _image_weights() -> list[int]:
    return [w for w in IMAGE_WEIGHTS for _ in range(IMAGE_VARIANTS)]
