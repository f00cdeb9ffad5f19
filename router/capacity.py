"""Canary capacity that follows its weight: the controller asks for it before each step.

At the current weight c % stable's ready pods carry (100 - c) % of the traffic, so all of it
needs `stable_ready / (1 - c / 100)` pods, and the canary at the next weight w % needs
`ceil(stable_ready / (1 - c / 100) * w / 100)` ready pods (stable's own HPA follows its falling
share, so this tracks the traffic; the canary's pods, raised here, do not count); otherwise its HPA,
sized for 5 %, lags behind a jump to 50 % and the latency check fails the canary for want of
pods, not for its model. Before each step the controller calls `ensure(weight)`: the scaler
raises the canary HorizontalPodAutoscaler's `minReplicas` (and `maxReplicas` if lower) and
answers True only once the canary Deployment has that many ready replicas; the controller does
not move the weight until then. When the rollout ends, `release()` puts the minimum back.

`KubernetesScaler` talks to the Kubernetes API over HTTP with the pod's service-account token
(no client library): GET the Deployments, merge-PATCH the HPA. The router's ServiceAccount needs
`get` on deployments and `get`/`patch` on horizontalpodautoscalers in its namespace
(k8s/components/canary-capacity).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

if TYPE_CHECKING:
    from router.settings import RouterSettings

log = logging.getLogger("inkwell.router.capacity")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"


class Scaler(Protocol):
    """Gives the canary the pods a traffic weight needs."""

    async def ensure(self, weight: float, current: float) -> bool:
        """Ask for the capacity of `weight` % (now at `current` %); True once it is ready."""
        ...

    async def release(self) -> None:
        """The rollout ended: back to the canary's resting minimum."""
        ...

    async def aclose(self) -> None: ...


def canary_pods(weight: float, stable_ready: int, current: float = 0.0, floor: int = 1) -> int:
    """Ready canary pods for `weight` % of the traffic, when `stable_ready` stable pods carry
    the rest of the `current` weight."""
    total = stable_ready / max(1 - current / 100, 0.01)
    return max(floor, math.ceil(total * weight / 100 - 1e-9))


class KubernetesScaler:
    """The canary's HPA minimum raised through the Kubernetes API; readiness from its Deployment."""

    def __init__(
        self,
        api_url: str,
        namespace: str,
        *,
        token: str | None,
        ca_file: Path | None = None,
        canary: str = "inkwell-service-canary",
        stable: str = "inkwell-service-stable",
        floor: int = 1,
        timeout_s: float = 5.0,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        verify: bool | str = str(ca_file) if ca_file is not None and ca_file.exists() else True
        self.client = httpx.AsyncClient(
            base_url=api_url.rstrip("/"), headers=headers, verify=verify, timeout=timeout_s
        )
        self.namespace = namespace
        self.canary = canary
        self.stable = stable
        self.floor = floor

    @classmethod
    def in_cluster(
        cls, api_url: str, namespace: str | None, account_dir: Path = SERVICE_ACCOUNT_DIR, **kw: Any
    ) -> KubernetesScaler:
        """A scaler with the pod's service-account token, CA and (unless given) namespace."""
        token_file = account_dir / "token"
        token = token_file.read_text().strip() if token_file.exists() else None
        if namespace is None:
            namespace = (account_dir / "namespace").read_text().strip()
        return cls(api_url, namespace, token=token, ca_file=account_dir / "ca.crt", **kw)

    def _deployment(self, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}"

    def _hpa(self, name: str) -> str:
        return f"/apis/autoscaling/v2/namespaces/{self.namespace}/horizontalpodautoscalers/{name}"

    async def _get(self, path: str) -> dict[str, Any]:
        response = await self.client.get(path)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def _ready(self, deployment: str) -> int:
        body = await self._get(self._deployment(deployment))
        return int(body.get("status", {}).get("readyReplicas") or 0)

    async def _set_minimum(self, pods: int) -> None:
        hpa = await self._get(self._hpa(self.canary))
        spec = hpa.get("spec", {})
        patch: dict[str, Any] = {"minReplicas": pods}
        if int(spec.get("maxReplicas", pods)) < pods:
            patch["maxReplicas"] = pods
        if spec.get("minReplicas") == pods and "maxReplicas" not in patch:
            return
        response = await self.client.patch(
            self._hpa(self.canary), json={"spec": patch}, headers={"Content-Type": MERGE_PATCH}
        )
        response.raise_for_status()
        log.info("canary HPA %s: %s", self.canary, patch)

    async def ensure(self, weight: float, current: float) -> bool:
        """Raise the canary HPA's minimum for `weight` %; True once that many pods are ready."""
        stable_ready = await self._ready(self.stable)
        pods = canary_pods(weight, stable_ready, current, self.floor)
        await self._set_minimum(pods)
        ready = await self._ready(self.canary)
        if ready < pods:
            log.info(
                "waiting for canary capacity at %g %%: %d of %d pods ready", weight, ready, pods
            )
        return ready >= pods

    async def release(self) -> None:
        """Put the canary HPA's minimum back to the floor."""
        await self._set_minimum(self.floor)

    async def aclose(self) -> None:
        await self.client.aclose()


def make_scaler(settings: RouterSettings) -> Scaler | None:
    """The scaler `settings.canary_capacity` asks for (None: off)."""
    if settings.canary_capacity == "off":
        return None
    return KubernetesScaler.in_cluster(
        settings.kubernetes_api_url,
        settings.kubernetes_namespace,
        canary=settings.canary_deployment,
        stable=settings.stable_deployment,
    )
