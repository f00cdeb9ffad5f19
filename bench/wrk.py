"""wrk, a well-known C load generator, run beside a bench's own client on the same target.

A bench's own client is Python and shares the cores with the process it measures, so it can
push fewer requests per second and see a different process than a real client does. Running
wrk on the same port, with the same bodies and connections, in turns with the bench's client,
shows whether the two agree. Self-contained (stdlib only) so that any bench can use it.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
MISSING = (
    "wrk is not installed, so the side-by-side wrk runs are skipped. Install it "
    "(`apt-get install wrk` on Debian/Ubuntu, `brew install wrk` on macOS) and run again."
)
# wrk prints its own report first; the script's done() adds one line with this prefix.
MARK = "INKWELL-WRK "
_LUA = """
local files = {%(files)s}
local heads = {%(heads)s}
local requests = {}
local index = 0

init = function(args)
  for i, name in ipairs(files) do
    local f = assert(io.open(name, "rb"))
    local body = f:read("*all")
    f:close()
    requests[i] = wrk.format("POST", "%(path)s", heads[i], body)
  end
end

request = function()
  index = index %% #requests + 1
  return requests[index]
end

done = function(summary, latency, requests)
  local e = summary.errors
  local out = {
    string.format('"requests": %%d', summary.requests),
    string.format('"duration_us": %%d', summary.duration),
    string.format('"errors": %%d', e.connect + e.read + e.write + e.status + e.timeout),
    string.format('"max_us": %%d', latency.max),
  }
  for _, p in ipairs({%(percentiles)s}) do
    out[#out + 1] = string.format('"p%%s": %%d', p, latency:percentile(p))
  end
  io.write("%(mark)s{" .. table.concat(out, ", ") .. "}\\n")
end
"""


@dataclass(frozen=True)
class WrkRequest:
    """One request body wrk sends (it cycles through several) and its headers."""

    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured: answered requests, non-2xx and socket errors, latencies."""

    requests: int
    errors: int
    seconds: float
    percentiles_ms: dict[float, float]
    max_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return self.percentiles_ms.get(q, math.nan)


def binary() -> str | None:
    """The wrk executable on PATH, or None."""
    return shutil.which("wrk")


def lua_script(path: str, requests: Sequence[WrkRequest], directory: Path) -> Path:
    """A wrk script that POSTs `requests` to `path` in turn and reports the latencies."""
    if not requests:
        raise ValueError("wrk needs at least one request body")
    files, heads = [], []
    for index, request in enumerate(requests):
        body_file = directory / f"body-{index}.bin"
        body_file.write_bytes(request.body)
        files.append(json.dumps(str(body_file)))
        headers = {"Content-Type": request.content_type, **request.headers}
        heads.append(
            "{"
            + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
            + "}"
        )
    script = directory / "inkwell.lua"
    script.write_text(
        _LUA
        % {
            "files": ", ".join(files),
            "heads": ", ".join(heads),
            "path": path,
            "percentiles": ", ".join(f"{p:g}" for p in PERCENTILES),
            "mark": MARK,
        }
    )
    return script


def parse(output: str) -> WrkResult:
    """The result line the script's done() printed."""
    for line in output.splitlines():
        if line.startswith(MARK):
            data = json.loads(line[len(MARK) :])
            return WrkResult(
                requests=int(data["requests"]),
                errors=int(data["errors"]),
                seconds=data["duration_us"] / 1e6,
                percentiles_ms={p: data[f"p{p:g}"] / 1000 for p in PERCENTILES},
                max_ms=data["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no result line:\n{output}")


def run(
    port: int,
    path: str,
    requests: Sequence[WrkRequest],
    *,
    connections: int,
    seconds: float,
    threads: int = 2,
    warmup: float = 0.0,
) -> WrkResult:
    """wrk against http://127.0.0.1:`port``path` (after an unmeasured `warmup` run)."""
    executable = binary()
    if executable is None:
        raise FileNotFoundError(MISSING)
    with tempfile.TemporaryDirectory(prefix="inkwell-wrk-") as tmp:
        script = lua_script(path, requests, Path(tmp))

        def once(duration: float) -> str:
            command = [
                executable, f"-t{min(threads, connections)}", f"-c{connections}",
                f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script),
                f"http://{HOST}:{port}{path}",
            ]  # fmt: skip
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=duration + 60, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
            return done.stdout

        if warmup > 0:
            once(warmup)
        return parse(once(seconds))


def multipart(field_name: str, filename: str, content: bytes, content_type: str) -> WrkRequest:
    """A multipart/form-data body with one file field, as `curl -F` sends it."""
    boundary = "inkwell-bench-7d1f0c"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return WrkRequest(body, f"multipart/form-data; boundary={boundary}")


@dataclass(frozen=True)
class LatencyStats:
    """One run's throughput and latency percentiles, from any load generator."""

    rate: float
    p50: float
    p90: float
    p99: float
    p999: float
    max_ms: float
    errors: int = 0

    @classmethod
    def of_latencies(
        cls, latencies_ms: Sequence[float], seconds: float, errors: int = 0
    ) -> LatencyStats:
        """From a bench client's own per-request latencies."""
        if not latencies_ms:
            nan = math.nan
            return cls(0.0, nan, nan, nan, nan, nan, errors)
        ordered = sorted(latencies_ms)

        def pct(q: float) -> float:
            # nearest rank, as wrk's histogram reports it
            rank = math.ceil(round(q * len(ordered) / 100, 6))  # 99.9 % of 1000 is 999, not 1000
            return ordered[min(len(ordered), max(1, rank)) - 1]

        rate = len(ordered) / seconds if seconds else 0.0
        return cls(rate, pct(50), pct(90), pct(99), pct(99.9), ordered[-1], errors)

    @classmethod
    def of_wrk(cls, result: WrkResult) -> LatencyStats:
        """From a wrk run."""
        p = result.percentile
        return cls(result.rate, p(50), p(90), p(99), p(99.9), result.max_ms, result.errors)

    @property
    def tail_ratio(self) -> float:
        """p99 / p90: about 1-2 for a healthy closed loop; far above when a few requests stall."""
        return self.p99 / self.p90 if self.p90 else math.nan

    def cells(self) -> list[str]:
        """Table cells in the order of COLUMNS."""
        return [
            f"{self.rate:,.0f}",
            *(f"{v:.1f}" for v in (self.p50, self.p90, self.p99, self.p999, self.max_ms)),
            f"{self.tail_ratio:.1f}",
            str(self.errors),
        ]


COLUMNS = ("req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "p99/p90", "errors")


def median_of(runs: Sequence[LatencyStats]) -> LatencyStats:
    """Each statistic's median over rounds (max: the largest), errors summed."""

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    return LatencyStats(
        rate=median([r.rate for r in runs]),
        p50=median([r.p50 for r in runs]),
        p90=median([r.p90 for r in runs]),
        p99=median([r.p99 for r in runs]),
        p999=median([r.p999 for r in runs]),
        max_ms=max(r.max_ms for r in runs),
        errors=sum(r.errors for r in runs),
    )
