"""The wrk side-by-side runs of the benches: what wrk sends, what it reports, and its absence."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from starlette.datastructures import UploadFile
from starlette.requests import Request

from bench import wrk

needs_wrk = pytest.mark.skipif(wrk.binary() is None, reason=wrk.MISSING)
STALL_EVERY = 25
STALL_S = 0.06


class Recorder(ThreadingHTTPServer):
    """A keep-alive HTTP/1.1 server that records requests and stalls every STALL_EVERY-th."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[tuple[str, str, str, bytes]] = []
        self.counter = itertools.count(1)
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            number = next(self.server.counter)
            self.server.seen.append(
                (self.path, self.headers["Content-Type"], self.headers["X-User-Id"], body)
            )
        if number % STALL_EVERY == 0:
            threading.Event().wait(STALL_S)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.integration
@needs_wrk
def test_wrk_sends_every_body_with_its_headers_and_reports_the_stalled_requests(
    recorder: Recorder,
) -> None:
    requests = [
        wrk.WrkRequest(b"first", "image/png", {"X-User-Id": "user-0"}),
        wrk.multipart("image", "d.png", b"second", "image/png"),
    ]
    result = wrk.run(recorder.server_address[1], "/v1/x", requests, connections=2, seconds=1)
    assert result.errors == 0 and result.requests >= STALL_EVERY * 2
    kinds = {(path, kind.split(";")[0], user) for path, kind, user, _ in recorder.seen}
    assert kinds == {("/v1/x", "image/png", "user-0"), ("/v1/x", "multipart/form-data", None)}
    assert {body for *_, body in recorder.seen} == {requests[0].body, requests[1].body}
    # One request in STALL_EVERY waits STALL_S: the p99 and the max see it, the median does not.
    assert result.max_ms >= STALL_S * 1000 and result.percentile(99) >= STALL_S * 1000
    assert result.percentile(50) < STALL_S * 1000 / 2


def test_missing_wrk_is_skipped_with_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert wrk.binary() is None
    with pytest.raises(FileNotFoundError, match="apt-get install wrk"):
        wrk.run(1, "/", [wrk.WrkRequest(b"x", "image/png")], connections=1, seconds=1)


def test_multipart_body_is_one_image_field_for_the_services_form_parser() -> None:
    request = wrk.multipart("image", "digit-3.png", b"\x89PNG bytes", "image/png")
    asyncio.run(assert_one_image_field(request))


async def assert_one_image_field(request: wrk.WrkRequest) -> None:
    chunks = [{"type": "http.request", "body": request.body, "more_body": False}]

    async def receive() -> dict[str, object]:
        return chunks.pop(0)

    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"content-type", request.content_type.encode())],
    }
    form = await Request(scope, receive).form()
    upload = form["image"]
    assert isinstance(upload, UploadFile) and upload.filename == "digit-3.png"
    assert await upload.read() == b"\x89PNG bytes" and list(form.keys()) == ["image"]


def test_latency_stats_use_nearest_rank_percentiles_and_the_p99_to_p90_ratio() -> None:
    stats = wrk.LatencyStats.of_latencies([float(ms) for ms in range(1, 1001)], seconds=2.0)
    assert (stats.rate, stats.p50, stats.p90, stats.p99, stats.p999, stats.max_ms) == (
        500.0, 500.0, 900.0, 990.0, 999.0, 1000.0,
    )  # fmt: skip
    assert stats.tail_ratio == pytest.approx(1.1)
    slow = wrk.LatencyStats(100.0, 10.0, 12.0, 200.0, 250.0, 600.0, errors=1)
    median = wrk.median_of([stats, slow, stats])
    assert median.p99 == 990.0 and median.max_ms == 1000.0 and median.errors == 1


def test_parse_reads_the_scripts_result_line_and_refuses_output_without_one() -> None:
    line = (
        f'{wrk.MARK}{{"requests": 10, "duration_us": 2000000, "errors": 1, "max_us": 9000, '
        '"p50": 1000, "p90": 2000, "p99": 3000, "p99.9": 4000}'
    )
    result = wrk.parse(f"Running 2s test\n{line}\n")
    assert result.rate == 5.0 and result.errors == 1 and result.max_ms == 9.0
    assert [result.percentile(p) for p in wrk.PERCENTILES] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(RuntimeError, match="no result line"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused")
