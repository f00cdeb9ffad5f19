"""The stable/canary reverse proxy: decides, forwards (through `forward`), falls back.

For a model route (digits, cheques, Open Inference Protocol models) the proxy picks the variant
(`routing.choose`), forwards the request unchanged, retries a failed canary answer on stable
(the client never sees the canary's error), feeds the circuit breaker, mirrors a copy to the
canary in shadow mode, remembers the prediction for delayed labels, and records metrics by
variant and model version. Every other route goes to stable.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from inkwell import contract
from inkwell.contract import OVERRIDE_KEY_HEADER, USER_HEADER, VARIANT_HEADER
from inkwell.errors import (
    BadRequestError,
    InvalidInputError,
    PayloadTooLargeError,
    UpstreamUnavailableError,
)
from inkwell.settings import CANARY, STABLE
from router import metrics as m
from router.breaker import BreakerConfig, BreakerState, CircuitBreaker
from router.feedback import Served, ServedMemory, score
from router.forward import TIMEOUT, Upstream, UpstreamFailure, make_upstream
from router.metrics import RouterMetrics
from router.payload import Peek, answer_problem, answered, peek, prediction_of, version_of
from router.pending import PendingPredictions
from router.routing import (
    Split,
    check_override_key,
    choose,
    parse_override,
    should_shadow,
    validate_user_id,
)
from router.settings import RouterSettings

log = logging.getLogger("inkwell.router")

MODEL_PREFIXES = ("/v1/digits/", "/v1/cheques/", "/v2/models/")
CHEQUE_PREFIX = "/v1/cheques/"  # split by the cheque rollout when it runs
# Under a model prefix but not a model answer: reviewed uploads and the review queue share one
# store, so they go to stable like /v1/samples and stay out of the canary's analysis.
STABLE_ONLY_PREFIXES = ("/v1/cheques/samples", "/v1/cheques/reviews")
SAMPLES_PATH = "/v1/samples"
KNOWN_PREFIXES = ("/v1/", "/v2/")
# Route labels are built from these words only (anything else is "other"), so a client probing
# random paths cannot grow the metrics without bound.
ROUTE_WORDS = frozenset(
    {
        "v1", "v2", "digits", "predict", "batch", "cheques", "read", "samples", "stats", "reviews",
        "health", "live", "ready", "models", "{model}", "versions", "{version}", "infer", "{id}",
    }
)  # fmt: skip
# Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus ones httpx recomputes.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
# Client-supplied addresses are never forwarded: a client could pose as any address (to the
# service's logs and per-client limits). The router sets X-Forwarded-For itself from the peer,
# which uvicorn has already resolved through trusted proxies only (FORWARDED_ALLOW_IPS).
CLIENT_ADDRESS_HEADERS = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})
# The router's server adds its own; the service's would be duplicates.
ANSWER_DROPPED = HOP_BY_HOP | {b"date", b"server"}
USER_HEADER_B = USER_HEADER.encode()
VARIANT_HEADER_B = VARIANT_HEADER.encode()
OVERRIDE_KEY_HEADER_B = OVERRIDE_KEY_HEADER.encode()
ANSWERED_HEADER = contract.VARIANT_HEADER.encode()
FALLBACK_HEADER = contract.FALLBACK_HEADER.encode()
UNKNOWN_VERSION = "unknown"
# Bodies above this are read (JSON parsed, multipart split, hashed) in a worker thread: a
# 16 MB JSON document takes the event loop away from every other request for ~0.1 s.
PEEK_INLINE_BYTES = 64 * 1024


@functools.lru_cache(maxsize=4096)
def route_template(path: str) -> str:
    """A low-cardinality route label: ids and model names become placeholders."""
    if not path.startswith(KNOWN_PREFIXES):
        return "other"
    parts = path.strip("/").split("/")
    if len(parts) > 6:
        return "other"
    if parts[:2] == ["v2", "models"] and len(parts) > 2:
        parts[2] = "{model}"
        if len(parts) > 4 and parts[3] == "versions":
            parts[4] = "{version}"
    words = ["{id}" if p.isdigit() else p for p in parts]
    if not all(w in ROUTE_WORDS for w in words):
        return "other"
    return "/" + "/".join(words)


# Bytes that would end or split the upstream request line: controls, space, DEL.
_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")


def request_target(scope: MutableMapping[str, Any]) -> str:
    """The target to forward: the client's raw (still percent-encoded) path and query.

    The decoded `path` turns `%0d%0a` into a real line break, which would split one client
    request into two upstream requests on a kept-alive connection; the raw bytes cannot.
    A target that decodes to controls or spaces is refused too: no route has them.
    """
    path: str = scope["path"]
    raw_path: bytes = scope.get("raw_path") or path.encode("utf-8")
    query: bytes = scope.get("query_string", b"")
    for part, shown in ((path.encode("utf-8"), "path"), (raw_path, "path"), (query, "query")):
        if _UNSAFE_TARGET.search(part):
            raise BadRequestError(
                f"the request {shown} contains control characters or spaces (such as %0d%0a "
                "or %20); percent-encoded line breaks and spaces are not allowed in a URL "
                "here. Send the path without them.",
                code="invalid_request_target",
            )
    target = raw_path + b"?" + query if query else raw_path
    return target.decode("latin-1")


def is_model_route(path: str) -> bool:
    """Routes answered by a model, split between stable and canary."""
    return path.startswith(MODEL_PREFIXES) and not path.startswith(STABLE_ONLY_PREFIXES)


@dataclass
class Backend:
    """One service (stable or canary) and what we know about it."""

    variant: str
    url: str
    upstream: Upstream
    timeout: float
    served_version: str | None = None  # from the last readiness probe
    cheque_version: str | None = None  # the cheque model version it reads amounts with
    ready: bool = False
    probed_at: float = 0.0


@dataclass
class Incoming:
    """What the proxy needs from a request's headers, read in one pass."""

    upstream: list[tuple[bytes, bytes]]  # the headers to forward
    content_type: str | None = None
    content_length: str | None = None
    user: str | None = None
    variant: str | None = None
    override_key: str | None = None
    cookie: str | None = None


def read_headers(scope: MutableMapping[str, Any]) -> Incoming:
    incoming = Incoming([])
    forward = incoming.upstream
    for name, value in scope["headers"]:
        if name == b"content-type":
            incoming.content_type = value.decode("latin-1")
        elif name == b"content-length":
            incoming.content_length = value.decode("latin-1")
            continue
        elif name == USER_HEADER_B:
            incoming.user = value.decode("latin-1")
        elif name == VARIANT_HEADER_B:
            incoming.variant = value.decode("latin-1")
        elif name == b"cookie":
            incoming.cookie = value.decode("latin-1")
        elif name == OVERRIDE_KEY_HEADER_B:
            incoming.override_key = value.decode("latin-1")
            continue  # a key for the router only: never sent on
        elif name in CLIENT_ADDRESS_HEADERS:
            continue
        if name not in HOP_BY_HOP:
            forward.append((name, value))
    client = scope.get("client")
    if client:
        forward.append((b"x-forwarded-for", client[0].encode("latin-1")))
    return incoming


def secure_flag(scope: MutableMapping[str, Any]) -> str:
    """`; Secure` when the client reached us over TLS (`X-Forwarded-Proto` from a trusted proxy
    sets the scheme, see `forwarding_options`), so the cookie never travels in clear after."""
    return "; Secure" if scope.get("scheme") == "https" else ""


def cookie_value(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


@dataclass
class Attempt:
    """The outcome of sending one request to one backend."""

    outcome: str
    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes
    seconds: float
    version: str
    prediction: str | None = None  # of a 2xx POST answer on a model route
    image_key: str | None = None
    keyed: bool = False  # the service sent answer headers: `image_key` is its word, even None
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.outcome in m.FAILED_OUTCOMES


def _make_upstream(url: str, settings: RouterSettings) -> Upstream:
    return make_upstream(
        settings.upstream_client,
        url,
        connect_timeout=settings.connect_timeout_s,
        max_connections=settings.max_connections,
    )


class Proxy:
    """Forwards client requests to the stable and canary services."""

    def __init__(
        self,
        settings: RouterSettings,
        metrics: RouterMetrics,
        split: Callable[[], Split],
        *,
        cheque_split: Callable[[], Split | None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.split = split
        # The cheque rollout's split for the cheque model routes; None: they follow `split`.
        self.cheque_split = cheque_split
        self.rng = rng or random.Random()
        self.stable = Backend(
            STABLE,
            settings.stable_url,
            _make_upstream(settings.stable_url, settings),
            settings.stable_timeout_s,
        )
        self.canary = Backend(
            CANARY,
            settings.canary_url,
            _make_upstream(settings.canary_url, settings),
            settings.canary_timeout_s,
        )
        self.breaker = CircuitBreaker(
            BreakerConfig(
                consecutive_failures=settings.breaker_consecutive_failures,
                error_rate=settings.breaker_error_rate,
                min_requests=settings.breaker_min_requests,
                window_s=settings.breaker_window_s,
                cooldown_s=settings.breaker_cooldown_s,
            ),
            clock=clock,
        )
        self.memory = ServedMemory(settings.served_memory)
        # set at start with served_store=database: predictions wait there for labels instead
        self.pending: PendingPredictions | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.max_shadow_in_flight = 64  # beyond this, copies are dropped: shadow never queues
        self.override_keys: tuple[str, ...] = ()  # may send X-Inkwell-Variant (set at start)

    def backend(self, variant: str) -> Backend:
        return self.canary if variant == CANARY else self.stable

    # ---- the request path -----------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        """Answer one client request through the stable or canary service."""
        started = time.perf_counter()
        scope = request.scope
        path: str = scope["path"]
        method: str = scope["method"]
        query: str = scope.get("query_string", b"").decode("latin-1")
        target = request_target(scope)
        route = route_template(path)
        incoming = read_headers(scope)
        body = await self._read_body(request, incoming.content_length)
        raw_headers = incoming.upstream
        if not is_model_route(path):
            return await self._to_stable(
                method, path, target, query, raw_headers, body, route, started
            )

        cheque_split = self.cheque_split() if self.cheque_split is not None else None
        cheques = cheque_split is not None and path.startswith(CHEQUE_PREFIX)
        split = cheque_split if cheque_split is not None and cheques else self.split()
        override = parse_override(incoming.variant)
        if override is not None:
            check_override_key(incoming.override_key, self.override_keys)
        # A tester's override is kept out of everything the rollout is judged on: its own
        # metric mode, no circuit breaker, no shadow copy, no delayed-label scoring.
        mode = m.LIVE if override is None else m.OVERRIDE
        user_id = validate_user_id(
            incoming.user or cookie_value(incoming.cookie, self.settings.user_cookie)
        )
        # The body is read up front only for a user id the headers did not carry; the image key
        # comes from the service's answer headers (`_image_key`).
        peeked: Peek | None = None
        if user_id is None and method == "POST":
            peeked = await self._peek(incoming.content_type, body, query, strict=True)
            user_id = validate_user_id(peeked.user_id)
        new_cookie: str | None = None
        if user_id is None and self.settings.assign_user_cookie:
            user_id = new_cookie = secrets.token_hex(8)

        served = self.canary.cheque_version if cheques else self.canary.served_version
        canary_ready = split.has_canary and served == split.canary_version
        choice = choose(
            split,
            user_id=user_id,
            override=override,
            canary_allowed=canary_ready and self.breaker.peek(),
            rng=self.rng,
        )
        answered = choice.variant
        fallback = ""
        if answered == CANARY and override is None and not self.breaker.allow():
            answered = STABLE
        if answered == CANARY:
            attempt = await self._attempt(
                self.canary, method, path, target, raw_headers, body, mode=mode
            )
            if override is None:
                self._breaker_record(not attempt.failed)
            if attempt.failed:
                fallback = attempt.outcome
                self.metrics.fallbacks.labels(attempt.outcome).inc()
                log.warning(
                    "canary %s on %s (%s); answering from stable", fallback, path, attempt.error
                )
                answered = STABLE
                attempt = await self._attempt(
                    self.stable, method, path, target, raw_headers, body, mode=mode
                )
        else:
            attempt = await self._attempt(
                self.stable, method, path, target, raw_headers, body, mode=mode
            )
        # stable's answer, whatever it is, even a 5xx (its message says what went wrong); only
        # no answer at all is the router's 502
        if attempt.outcome in (m.TIMEOUT, m.UNAVAILABLE):
            self._count(route, STABLE, self.stable.served_version, 502, started)
            raise UpstreamUnavailableError(
                f"the stable service at {self.stable.url} did not answer ({attempt.error}); "
                "retry shortly, and check that it is running (`inkwell service`)."
            )

        version = attempt.version
        prediction = attempt.prediction if method == "POST" else None
        image_key = None
        if prediction is not None and override is None:
            image_key = await self._image_key(attempt, peeked, incoming.content_type, body, query)
            if image_key:
                self._remember(image_key, Served(answered, version, prediction))
        if (
            method == "POST"
            and override is None
            and not fallback
            and prediction is not None
            and should_shadow(split, answered, canary_ready and self.breaker.peek(), self.rng)
        ):
            self._start_shadow(
                method,
                path,
                target,
                raw_headers,
                body,
                prediction,
                version,
                image_key,
            )
        response = self._response(attempt, answered, fallback)
        if new_cookie is not None:
            response.raw_headers.append(
                (
                    b"set-cookie",
                    f"{self.settings.user_cookie}={new_cookie}; Path=/; Max-Age=31536000; "
                    f"SameSite=Lax; HttpOnly{secure_flag(scope)}".encode(),
                )
            )
        self._count(route, answered, version, attempt.status, started)
        return response

    async def _to_stable(
        self,
        method: str,
        path: str,
        target: str,
        query: str,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        route: str,
        started: float,
    ) -> Response:
        """Non-model routes (samples, stats, health) always go to stable."""
        attempt = await self._attempt(self.stable, method, path, target, raw_headers, body)
        if attempt.outcome in (m.TIMEOUT, m.UNAVAILABLE):  # a 5xx answer is passed on as is
            self._count(route, STABLE, self.stable.served_version, 502, started)
            raise UpstreamUnavailableError(
                f"the stable service at {self.stable.url} did not answer ({attempt.error}); "
                "retry shortly, and check that it is running."
            )
        if method == "POST" and path == SAMPLES_PATH and 200 <= attempt.status < 300:
            await self._score_label(raw_headers, body, query)
        self._count(route, STABLE, self.stable.served_version, attempt.status, started)
        return self._response(attempt, STABLE, "")

    async def _peek(
        self, content_type: str | None, body: bytes, query: str, *, strict: bool
    ) -> Peek:
        """`payload.peek`, in a worker thread for a large body."""
        if len(body) <= PEEK_INLINE_BYTES:
            return peek(content_type, body, query, strict=strict)
        return await asyncio.to_thread(peek, content_type, body, query, strict=strict)

    async def _image_key(
        self,
        attempt: Attempt,
        peeked: Peek | None,
        content_type: str | None,
        body: bytes,
        query: str,
    ) -> str | None:
        """The answered image's key: the service's header, else (a service without answer
        headers) the router's own reading of the request body."""
        if attempt.keyed:
            return attempt.image_key
        if peeked is None:
            peeked = await self._peek(content_type, body, query, strict=False)
        return peeked.image_key

    async def _score_label(
        self, raw_headers: list[tuple[bytes, bytes]], body: bytes, query: str
    ) -> None:
        """A stored labelled upload scores earlier predictions of the same image."""
        content_type = next(
            (v.decode("latin-1") for k, v in raw_headers if k == b"content-type"), None
        )
        found = await self._peek(content_type, body, query, strict=False)
        if not found.image_key or found.label is None:
            return
        if self.pending is not None:
            served_before = await asyncio.to_thread(self.pending.take, found.image_key)
        else:
            served_before = self.memory.take(found.image_key)
        for served, correct in score(served_before, found.label):
            self.metrics.online_predictions.labels(
                served.variant, served.version, "true" if correct else "false"
            ).inc()

    def _remember(self, key: str, served: Served) -> None:
        if self.pending is not None:
            self.pending.remember(key, served)
        else:
            self.memory.remember(key, served)

    # ---- shadow ------------------------------------------------------------------------------
    def _start_shadow(
        self,
        method: str,
        path: str,
        target: str,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        stable_prediction: str,
        stable_version: str,
        image_key: str | None,
    ) -> None:
        if len(self._shadow_tasks) >= self.max_shadow_in_flight:
            self.metrics.shadow_dropped.labels("busy").inc()
            return
        task = asyncio.create_task(
            self._shadow(
                method,
                path,
                target,
                raw_headers,
                body,
                stable_prediction,
                stable_version,
                image_key,
            )
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self,
        method: str,
        path: str,
        target: str,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        stable_prediction: str,
        stable_version: str,
        image_key: str | None,
    ) -> None:
        """Send a copy to the canary; compare its prediction with the one stable gave."""
        if not self.breaker.allow():
            self.metrics.shadow_dropped.labels("breaker_open").inc()
            return
        attempt = await self._attempt(
            self.canary, method, path, target, raw_headers, body, mode=m.SHADOW
        )
        self._breaker_record(not attempt.failed)
        if attempt.failed or not 200 <= attempt.status < 300:
            self.metrics.shadow_dropped.labels("canary_failed").inc()
            return
        prediction = attempt.prediction
        version = attempt.version
        if prediction is None:
            self.metrics.shadow_dropped.labels("no_prediction").inc()
            return
        agree = "true" if prediction == stable_prediction else "false"
        self.metrics.shadow_comparisons.labels(stable_version, version, agree).inc()
        if image_key:
            self._remember(image_key, Served(CANARY, version, prediction))

    async def drain_shadow(self) -> None:
        """Wait for in-flight shadow copies (shutdown and tests)."""
        while self._shadow_tasks:
            await asyncio.gather(*list(self._shadow_tasks), return_exceptions=True)

    # ---- one upstream request ----------------------------------------------------------------
    async def _attempt(
        self,
        backend: Backend,
        method: str,
        path: str,
        target: str,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        mode: str = m.LIVE,
    ) -> Attempt:
        """Send the request to one backend; `path` (decoded) classifies, `target` is sent."""
        started = time.perf_counter()
        outcome, status, headers, content, error = m.OK, 0, [], b"", ""
        try:
            answer = await backend.upstream.send(method, target, raw_headers, body, backend.timeout)
            status, headers, content = answer.status, answer.headers, answer.body
            if status >= 500:
                outcome, error = m.ERROR, f"HTTP {status}"
            elif status >= 400:
                outcome = m.CLIENT_ERROR
        except UpstreamFailure as failure:
            outcome = m.TIMEOUT if failure.kind == TIMEOUT else m.UNAVAILABLE
            error = failure.detail
        seconds = time.perf_counter() - started
        cheques = path.startswith(CHEQUE_PREFIX)
        served = backend.cheque_version if cheques else backend.served_version
        version = served or UNKNOWN_VERSION
        prediction = image_key = None
        keyed = False
        if is_model_route(path):
            said = answered(headers) if 200 <= status < 300 else None
            if said is not None:
                # The service refuses non-finite scores itself (ModelOutputError, a 5xx), so
                # its headers need no check of the body.
                version, prediction, image_key = said.version, said.prediction, said.image_key
                keyed = True
            elif 200 <= status < 300 and content[:1] in (b"{", b"["):
                document = _json(content)  # a service without answer headers
                version = version_of(document) or version
                if method == "POST":
                    prediction = prediction_of(document)
                    problem = answer_problem(document)
                    if problem is not None:
                        outcome, error = m.INVALID, f"unusable answer: {problem}"
            observe = (
                self.metrics.observe_cheque_upstream if cheques else self.metrics.observe_upstream
            )
            observe(backend.variant, version, outcome, mode, seconds)
        return Attempt(
            outcome, status, headers, content, seconds, version, prediction, image_key, keyed, error
        )

    # ---- helpers -------------------------------------------------------------------------------
    async def _read_body(self, request: Request, declared: str | None) -> bytes:
        limit = self.settings.max_body_bytes
        if declared is not None:
            if not declared.isdigit():
                raise InvalidInputError(
                    f"Content-Length {declared[:20]!r} is not a number of bytes.",
                    code="invalid_content_length",
                )
            if int(declared) > limit:
                raise _too_large(int(declared), limit)
            return await request.body()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _response(self, attempt: Attempt, answered: str, fallback: str) -> Response:
        response = Response(content=attempt.content, status_code=attempt.status)
        headers = [(k, v) for k, v in attempt.headers if k.lower() not in ANSWER_DROPPED]
        headers.append((b"content-length", str(len(attempt.content)).encode()))
        headers.append((ANSWERED_HEADER, answered.encode()))
        if fallback:
            headers.append((FALLBACK_HEADER, fallback.encode()))
        response.raw_headers = headers
        return response

    def _count(
        self, route: str, variant: str, version: str | None, status: int, started: float
    ) -> None:
        self.metrics.observe_request(
            route, variant, version or UNKNOWN_VERSION, status, time.perf_counter() - started
        )

    def _breaker_record(self, success: bool) -> None:
        before = self.breaker.state
        self.breaker.record(success)
        self._sync_breaker(before)

    def _sync_breaker(self, before: BreakerState) -> None:
        after = self.breaker.state
        if after is not before:
            if after is BreakerState.OPEN:
                self.metrics.circuit_trips.labels(CANARY).inc()
                log.warning("canary circuit breaker opened: sending its users to stable")
            self.metrics.circuit_open.labels(CANARY).set(1 if after is BreakerState.OPEN else 0)

    def reset_canary(self) -> None:
        """A new canary version: forget the old one's failures."""
        before = self.breaker.state
        self.breaker.reset()
        self._sync_breaker(before)

    # ---- backend versions ----------------------------------------------------------------
    async def probe(self, backend: Backend) -> str | None:
        """Ask a service which model version it serves (its readiness answer)."""
        try:
            answer = await backend.upstream.send(
                "GET", "/readyz", [(b"accept", b"application/json")], b"", 2.0
            )
        except UpstreamFailure:
            backend.ready = False
            backend.probed_at = time.monotonic()
            return backend.served_version
        document = _json(answer.body) if answer.body[:1] == b"{" else None
        backend.ready = answer.status == 200
        backend.probed_at = time.monotonic()
        version = version_of(document)
        if isinstance(document, dict) and answer.status == 200:
            cheque = document.get("cheque_model_version")
            backend.cheque_version = str(cheque) if isinstance(cheque, str | int) else None
        if version is not None:
            if version != backend.served_version:
                log.info("%s service now serves version %s", backend.variant, version)
                self.metrics.prime(backend.variant, version)
            backend.served_version = version
        return backend.served_version

    async def probe_all(self) -> None:
        await asyncio.gather(self.probe(self.stable), self.probe(self.canary))

    async def aclose(self) -> None:
        await self.drain_shadow()
        await asyncio.gather(self.stable.upstream.aclose(), self.canary.upstream.aclose())


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is {size} bytes; the router accepts at most {limit} "
        "(INKWELL_ROUTER_MAX_BODY_BYTES). Send a smaller image."
    )
