"""Reference proxy hops for `inkwell bench router`: what *any* proxy costs on this machine.

The router's overhead is only meaningful next to the cost of a proxy hop as such (two more
loopback connections, their reads and writes). `inkwell bench router --reference NAME` puts one
or more of these in front of the same service, in the same run, as extra targets:

- ``pipe``: a byte pipe on asyncio (uvloop): one upstream connection per client connection,
  bytes copied both ways, no HTTP parsing, no routing. The floor of any proxy written in
  Python.
- ``nginx``: Debian's nginx (``apt-get install nginx-light``) as a keep-alive HTTP reverse
  proxy with one worker process: a proxy written in C.

Neither is part of the serving path; they exist so a benchmark reader can tell what the router
itself adds.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

REFERENCES = ("nginx", "pipe")
HOST = "127.0.0.1"
PIPE_CHUNK = 65536


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(PIPE_CHUNK):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def run_pipe(upstream_port: int, port: int, host: str = HOST) -> None:
    """Serve forever on `port`, piping every connection to `upstream_port` byte for byte."""

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(host, upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, upstream_w), _pump(upstream_r, client_w))

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await server.serve_forever()


def serve_pipe(upstream_port: int, port: int) -> None:
    """Process entry point of the ``pipe`` reference (uvloop when installed, as uvicorn)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(run_pipe(upstream_port, port))
        return
    uvloop.run(run_pipe(upstream_port, port))


def nginx_config(workdir: Path, upstream_port: int, port: int) -> str:
    """An nginx.conf proxying `port` to the service on `upstream_port` (keep-alive both ways)."""
    return f"""\
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client-body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream service {{
        server {HOST}:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port};
        keepalive_requests 1000000;  # the default 1,000 closes a busy benchmark connection
        location / {{
            proxy_pass http://service;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def nginx_binary() -> str:
    """Path of nginx, or a usage error saying how to get it."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise FileNotFoundError(
        "nginx is not installed: `apt-get install nginx-light` (Debian), or compare with "
        "`--reference pipe` only."
    )


def reference_command(name: str, upstream_port: int, port: int, workdir: Path) -> list[str]:
    """The command line that starts reference `name` on `port` in front of `upstream_port`."""
    if name == "pipe":
        code = f"from router.reference import serve_pipe; serve_pipe({upstream_port}, {port})"
        return [sys.executable, "-c", code]
    if name == "nginx":
        binary = nginx_binary()
        conf = workdir / f"nginx-{port}.conf"
        conf.write_text(nginx_config(workdir, upstream_port, port))
        return [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx.log")]
    raise ValueError(f"unknown reference {name!r}: choose from {', '.join(REFERENCES)}")
