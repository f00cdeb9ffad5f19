"""Canary capacity follows its weight: the controller does not step before the pods are ready.

The scaler is the real `KubernetesScaler` speaking HTTP to a fake Kubernetes *API server* (the
real paths, verbs, merge-patch content type and object shapes of apps/v1 Deployments and
autoscaling/v2 HorizontalPodAutoscalers); the pods' readiness is what the test sets, as the
kubelet would report it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException, Request

from router.analysis import Sample
from router.capacity import KubernetesScaler, canary_pods
from router.controller import RolloutController
from router.metrics import RouterMetrics
from router.state import Phase
from tests.router.router_fakes import serve_in_thread
from tests.router.test_router_controller import INTERVAL, Harness, healthy, traffic

NAMESPACE = "inkwell"
TOKEN = "service-account-token"


@dataclass
class FakeApiServer:
    """Deployments and HPAs of one namespace, as the Kubernetes API serves them."""

    ready: dict[str, int] = field(
        default_factory=lambda: {"inkwell-service-stable": 10, "inkwell-service-canary": 1}
    )
    hpa: dict[str, Any] = field(default_factory=lambda: {"minReplicas": 1, "maxReplicas": 4})
    patches: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        def authorised(request: Request, namespace: str) -> None:
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                raise HTTPException(401, "Unauthorized")
            if namespace != NAMESPACE:
                raise HTTPException(403, "forbidden: wrong namespace")

        @app.get("/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        async def deployment(namespace: str, name: str, request: Request) -> dict[str, Any]:
            authorised(request, namespace)
            if name not in self.ready:
                raise HTTPException(404, f'deployments.apps "{name}" not found')
            return {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"replicas": self.ready[name]},
                "status": {"replicas": self.ready[name], "readyReplicas": self.ready[name]},
            }

        hpa_path = "/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{name}"

        def hpa_body(namespace: str, name: str) -> dict[str, Any]:
            return {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    **self.hpa,
                },
            }

        @app.get(hpa_path)
        async def get_hpa(namespace: str, name: str, request: Request) -> dict[str, Any]:
            authorised(request, namespace)
            if name != "inkwell-service-canary":
                raise HTTPException(404, "not found")
            return hpa_body(namespace, name)

        @app.patch(hpa_path)
        async def patch_hpa(namespace: str, name: str, request: Request) -> dict[str, Any]:
            authorised(request, namespace)
            if request.headers.get("content-type") != "application/merge-patch+json":
                raise HTTPException(415, "unsupported patch type")
            patch = json.loads(await request.body())["spec"]
            merged = {**self.hpa, **patch}
            if merged["minReplicas"] > merged["maxReplicas"]:
                raise HTTPException(422, "spec.maxReplicas: must be >= minReplicas")
            self.hpa = merged
            self.patches.append(patch)
            return hpa_body(namespace, name)

        return app


def test_canary_pods_follow_the_weight():
    assert [canary_pods(w, 10) for w in (5, 25, 50, 100)] == [1, 3, 5, 10]
    # stable's HPA shrank to 6 pods at 50 %: the traffic still needs 12, 12 at 100 %
    assert canary_pods(100, 6, current=50) == 12
    assert canary_pods(5, 0, floor=2) == 2


def test_controller_does_not_step_before_the_canary_has_the_pods(tmp_path):
    api = FakeApiServer()
    h = Harness(tmp_path)
    h.source.samples = healthy()

    async def rollout(url: str) -> None:
        scaler = KubernetesScaler(url, NAMESPACE, token=TOKEN)
        controller = RolloutController(
            h.settings,
            h.store,
            h.aliases,
            h.source,
            RouterMetrics(),
            h.served,
            clock=h.clock,
            capacity=scaler,
        )

        async def later() -> tuple[Phase, float]:
            h.clock.now += INTERVAL
            state = await controller.tick()
            return state.phase, state.weight

        try:
            state = await controller.tick()  # 5 % of 10 pods' traffic: the one canary pod does
            assert (state.phase, state.weight) == (Phase.CANARY, 5)
            # 25 % needs 3 pods: the step passed, but the weight waits for them
            assert await later() == (Phase.CANARY, 5)
            assert api.hpa["minReplicas"] == 3
            assert await later() == (Phase.CANARY, 5)
            api.ready["inkwell-service-canary"] = 2
            assert await later() == (Phase.CANARY, 5)
            api.ready["inkwell-service-canary"] = 3
            assert await later() == (Phase.CANARY, 25)
            passes = controller.metrics.registry.get_sample_value(
                "inkwell_rollout_analyses_total", {"result": "pass"}
            )
            assert passes == 1  # the waiting ticks did not count the same pass again
            # 50 % of the traffic (10 stable pods at 75 %) is 7 pods, above the HPA's
            # maximum of 4: both are raised
            assert await later() == (Phase.CANARY, 25)
            assert api.hpa == {"minReplicas": 7, "maxReplicas": 7}
            api.ready["inkwell-service-canary"] = 7
            assert await later() == (Phase.CANARY, 50)
            await controller.rollback("operator said so")
            state = await controller.tick()
            assert state.phase is Phase.ROLLED_BACK
            assert api.hpa["minReplicas"] == 1  # back to rest once the rollout is over
        finally:
            await scaler.aclose()

    with serve_in_thread(api.app()) as url:
        asyncio.run(rollout(url))


def test_without_a_scaler_the_controller_steps_as_before(tmp_path):
    h = Harness(tmp_path)
    h.source.samples = healthy()
    assert h.tick().weight == 5
    assert h.later().weight == 25


def test_an_unreachable_api_server_holds_the_weight(tmp_path):
    """No answer about capacity is no capacity: the tick fails and the weight stays."""
    h = Harness(tmp_path)
    h.source.samples = healthy()
    assert h.tick().weight == 5

    async def step() -> None:
        scaler = KubernetesScaler("http://127.0.0.1:9", NAMESPACE, token=TOKEN, timeout_s=1)
        controller = h.replica()
        controller.capacity = scaler
        h.clock.now += INTERVAL
        try:
            with pytest.raises(Exception, match="onnect"):
                await controller.tick()
        finally:
            await scaler.aclose()

    asyncio.run(step())
    assert asyncio.run(h.controller.load()).weight == 5


# ---- issue 22's target: a canary at 50 % is not failed on latency for want of pods ----------

# Requests per analysis window the whole fleet receives, and what one pod serves at 100 %
# utilisation: ten stable pods run at half load before the rollout.
FLEET_REQUESTS = 500
POD_CAPACITY = 100
SERVICE_TIME_S = 0.005
OVERLOADED_S = 2.0


def queueing_latency(requests: float, pods: int) -> float:
    """A pod's latency at its load (M/M/1: service time / (1 - utilisation)); a saturated
    variant queues until requests time out."""
    utilisation = requests / (max(pods, 1) * POD_CAPACITY)
    return SERVICE_TIME_S / (1 - utilisation) if utilisation < 0.9 else OVERLOADED_S


class LoadedFleet:
    """Metrics of a fleet whose latency follows each variant's load per ready pod: the
    router's split (the rollout state's weight) decides the load, the API server's ready pods
    the capacity, as in a cluster."""

    name = "loaded-fleet"

    def __init__(self, harness: Harness, api: FakeApiServer) -> None:
        self.harness, self.api = harness, api
        self.latencies: list[tuple[float, float, float]] = []  # (weight, canary s, stable s)

    async def observe(self) -> None:
        return None

    async def windows(self, *seconds: float) -> list[list[Sample]]:
        state = await asyncio.to_thread(self.harness.store.load, self.harness.settings.model_name)
        weight = state.weight if state.serving_canary else 0.0
        canary_requests = FLEET_REQUESTS * weight / 100
        stable_requests = FLEET_REQUESTS - canary_requests
        canary = queueing_latency(canary_requests, self.api.ready["inkwell-service-canary"])
        stable = queueing_latency(stable_requests, self.api.ready["inkwell-service-stable"])
        self.latencies.append((weight, canary, stable))
        samples = traffic("canary", "2", round(canary_requests), latency=canary) + traffic(
            "stable", "1", round(stable_requests), latency=stable
        )
        return [samples for _ in seconds]

    async def aclose(self) -> None:
        return None


def run_rollout(tmp_path, *, scale: bool) -> tuple[list[float], Phase, LoadedFleet]:
    """A rollout of a good canary on the loaded fleet until it passes its 50 % step (the weight
    reaches 100) or is rolled back; with `scale` the controller raises the canary HPA and the
    kubelet readies the pods it asks for before the next tick."""
    api = FakeApiServer()
    h = Harness(tmp_path)
    fleet = LoadedFleet(h, api)
    h.source = fleet  # type: ignore[assignment]

    async def rollout(url: str) -> tuple[list[float], Phase]:
        scaler = KubernetesScaler(url, NAMESPACE, token=TOKEN) if scale else None
        controller = RolloutController(
            h.settings,
            h.store,
            h.aliases,
            fleet,
            RouterMetrics(),
            h.served,
            clock=h.clock,
            capacity=scaler,
        )
        weights: list[float] = []
        try:
            state = await controller.tick()
            for _ in range(40):
                weights.append(state.weight)
                if state.weight == 100 or state.phase in (Phase.ROLLED_BACK, Phase.ROLLING_BACK):
                    break
                if scale:  # the kubelet: the pods the HPA minimum asks for become ready
                    api.ready["inkwell-service-canary"] = api.hpa["minReplicas"]
                h.clock.now += INTERVAL
                state = await controller.tick()
            return weights, state.phase
        finally:
            if scaler is not None:
                await scaler.aclose()

    with serve_in_thread(api.app()) as url:
        weights, phase = asyncio.run(rollout(url))
    return weights, phase, fleet


def test_a_good_canary_passes_its_50_percent_step_without_failing_latency_for_want_of_pods(
    tmp_path,
):
    weights, phase, fleet = run_rollout(tmp_path, scale=True)
    # 100 % is reached only once the 50 % step's analysis passed, latency check included.
    assert phase is Phase.CANARY and weights[-1] == 100, weights
    assert {5, 25, 50} <= set(weights)
    at_half = [(c, s) for w, c, s in fleet.latencies if w == 50]
    assert at_half and all(c < 1.5 * s + 0.025 for c, s in at_half), at_half


def test_without_the_scaler_the_same_canary_is_rolled_back_for_its_latency(tmp_path):
    """The control: one canary pod under a growing share saturates, and the latency check
    rolls back a canary whose only fault is its size."""
    weights, phase, fleet = run_rollout(tmp_path, scale=False)
    assert phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK), weights
    assert max(weights) < 50
    assert any(c == OVERLOADED_S for _, c, _ in fleet.latencies)
