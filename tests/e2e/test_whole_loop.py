"""The whole loop, end to end, through HTTP only, on a stack started with `inkwell up`:

1. a new customer uploads 64 labelled digits in a handwriting style the stable model reads
   poorly (a broad, slanted felt pen); the trainer validates them, retrains with replay and
   registers a canary; the router sends it traffic; the controller promotes it; the services
   hot-reload; predictions on that style improve while MNIST accuracy holds;
2. then someone uploads a poisoned batch (every label wrong): it is quarantined (or the
   candidate rejected or rolled back), and the stable model is exactly what it was.

The two tests share one stack and run in order (the second starts from the first's result).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from scipy import ndimage

from tests.e2e.stack import (
    API_KEY,
    ARTIFACTS,
    Stack,
    register_digits,
    registry_aliases,
    shipped_digit_weights,
)
from tests.harness import png, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration]

NEW_USER = "new-customer-ada"
POISONER = "mallory"
E2E_SETTINGS = {
    # one retrain per batch: wait for the whole 64 before starting
    "INKWELL_TRAINER_MIN_NEW_SAMPLES": "64",
    "INKWELL_TRAINER_NEW_USER_MIN_SAMPLES": "64",
    "INKWELL_TRAINER_DEBOUNCE_SECONDS": "2",
    "INKWELL_TRAINER_MAX_WAIT_SECONDS": "3600",
    # 20 % of 64 samples is ~12 held out: one sample is 8-9 pp, so a strict 0 pp rule on the
    # held-out new samples rejects on a single flip. Allow one; this test measures the style
    # on 400 other images itself.
    "INKWELL_TRAINER_GATE_MAX_NEW_DROP_PP": "10",
    # two steps, short intervals; the machine is shared, so latency is judged loosely here.
    # The last step stays below 100 %: at 100 % the stable service gets no traffic, so there
    # is no baseline to compare the canary with (reported to the router's owner).
    "INKWELL_ROUTER_ROLLOUT_STEPS": "25,50",
    "INKWELL_ROUTER_ANALYSIS_INTERVAL_S": "3",
    "INKWELL_ROUTER_MIN_REQUESTS": "20",
    "INKWELL_ROUTER_LATENCY_MARGIN_MS": "2000",
    "INKWELL_ROUTER_CANARY_TIMEOUT_S": "20",
}


# ---- data -----------------------------------------------------------------------------------


def felt_pen(image: np.ndarray) -> np.ndarray:
    """The new customer's style: a broad pen (strokes three pixels wide), slanted (shear 0.6)
    and the whole digit turned 15 degrees. The shipped model reads it ~83 % right."""
    ink = np.pad(image.astype(np.float32) / 255.0, 10)
    centre = np.array(ink.shape) / 2
    turn = np.deg2rad(15)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    warp = rotation @ np.array([[1.0, 0.0], [0.6, 1.0]])
    ink = ndimage.affine_transform(ink, warp, offset=centre - warp @ centre, order=1)
    ink = ndimage.grey_dilation(ink, size=(3, 3))
    return (np.clip(ink, 0, 1) * 255).astype(np.uint8)


class Digits:
    """MNIST test digits as the PNG files customers would send, in disjoint sets."""

    def __init__(self, mnist: Path) -> None:
        from inkwell.data import load_split

        test = load_split("test", mnist)
        self.images, self.labels = test.images, test.labels

    def plain(self, index: range) -> list[tuple[bytes, int]]:
        return [(png(self.images[i], dark_ink=True), int(self.labels[i])) for i in index]

    def styled(self, index: range) -> list[tuple[bytes, int]]:
        return [(png(felt_pen(self.images[i]), dark_ink=True), int(self.labels[i])) for i in index]


# ---- clients --------------------------------------------------------------------------------


def read_batch(stack: Stack, digits: list[tuple[bytes, int]], user: str) -> dict[str, Any]:
    """Accuracy of the answers the router gives `user`, and which variant/version gave them."""
    correct, variants = 0, set()
    with stack.client() as client:
        for start in range(0, len(digits), 100):
            chunk = digits[start : start + 100]
            response = client.post(
                "/v1/digits/predict/batch",
                files=[
                    ("images", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(chunk)
                ],
                headers={"X-User-Id": user},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            variants.add((body["variant"], body["model_version"]))
            predicted = [p["digit"] for p in body["predictions"]]
            correct += sum(p == label for p, (_, label) in zip(predicted, chunk, strict=True))
    return {"accuracy": correct / len(digits), "answered_by": variants}


def upload(stack: Stack, digits: list[tuple[bytes, int]], user: str) -> list[int]:
    """Upload labelled samples as `user`; returns their sample ids."""
    ids = []
    with stack.client() as client:
        for i, (data, label) in enumerate(digits):
            response = client.post(
                "/v1/samples",
                files={"image": (f"{user}-{i}.png", data, "image/png")},
                data={"label": str(label), "user_id": user, "idempotency_key": f"{user}-{i}"},
                headers={"X-API-Key": API_KEY},
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["sample_id"])
    return ids


def sample_stats(stack: Stack) -> dict[str, Any]:
    response = httpx.get(
        f"{stack.url}/v1/samples/stats", headers={"X-API-Key": API_KEY}, timeout=30
    )
    response.raise_for_status()
    return dict(response.json())


class Traffic:
    """Users reading digits through the router until stopped; records who answered."""

    def __init__(self, stack: Stack, digits: list[tuple[bytes, int]], users: int = 60) -> None:
        self.stack, self.digits, self.users = stack, digits, users
        self.answers: list[tuple[str, str, bool]] = []  # (variant, version, correct)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        rng = random.Random(0)
        with self.stack.client() as client:
            while not self._stop.is_set():
                data, label = self.digits[rng.randrange(len(self.digits))]
                try:
                    response = client.post(
                        "/v1/digits/predict",
                        content=data,
                        headers={
                            "content-type": "image/png",
                            "X-User-Id": f"user-{rng.randrange(self.users)}",
                        },
                    )
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.errors.append(response.text[:200])
                    continue
                body = response.json()
                self.answers.append(
                    (body["variant"], body["model_version"], body["digit"] == label)
                )

    def by_variant(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for variant, _, _ in self.answers:
            counts[variant] = counts.get(variant, 0) + 1
        return counts


def mnist_accuracy(home: Path, version: str, mnist: Path) -> float:
    """A registered version's accuracy on all 10,000 MNIST test images."""
    from inkwell.data import load_split
    from inkwell.registry import Registry
    from inkwell.settings import CoreSettings
    from inkwell.train import split_tensors
    from inkwell.training import evaluate

    loaded = Registry(CoreSettings(home=home)).load_digit_model(version)
    return evaluate(loaded.model, *split_tensors(load_split("test", mnist))).accuracy


# ---- the stack ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(mnist_dir: Path) -> Digits:
    return Digits(mnist_dir)


@pytest.fixture(scope="module")
def loop_stack(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("loop") / "home"
    home.mkdir()
    # the shipped base model (the production recipe, 99.4 % on MNIST test): the stable model a
    # real install starts from. It reads the felt pen ~83 % right (98.8 % on plain digits).
    register_digits(home, shipped_digit_weights(), ("stable",), note="shipped")
    stack = Stack(
        home=home,
        mnist=mnist_dir,
        log_path=ARTIFACTS / "e2e" / "inkwell-up.log",
        settings=E2E_SETTINGS,
    )
    try:
        yield stack.start(300.0)
    finally:
        stack.stop(timeout=60)
        stack.kill()
        stack.save_logs()


def wait_for_retrain(stack: Stack, previous_job: int | None, timeout: float) -> dict[str, Any]:
    """The trainer's status once a job newer than `previous_job` has finished."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = stack.trainer_status()
        last = status.get("last_job")
        if last and last["job_id"] != previous_job and not status["running"]:
            return status
        time.sleep(1.0)
    raise TimeoutError(
        f"no retrain finished within {timeout:g} s; last status {status}\n{stack.tail()}"
    )


# ---- the tests ------------------------------------------------------------------------------


def test_new_handwriting_style_is_learned_rolled_out_and_served(
    loop_stack: Stack, digits: Digits, mnist_dir: Path
) -> None:
    stack = loop_stack
    style_eval = digits.styled(range(0, 400))
    mnist_eval = digits.plain(range(1000, 1500))
    before_style = read_batch(stack, style_eval, "evaluator")
    before_mnist = read_batch(stack, mnist_eval, "evaluator")
    assert before_style["answered_by"] == {("stable", "1")}
    assert before_style["accuracy"] < before_mnist["accuracy"] - 0.1  # a style it reads poorly

    uploaded = upload(stack, digits.styled(range(400, 464)), NEW_USER)
    assert len(set(uploaded)) == 64
    status = wait_for_retrain(stack, None, timeout=900)
    outcome = status["last_outcome"]
    assert outcome is not None and outcome["status"] == "passed", json.dumps(outcome, indent=1)
    candidate = outcome["version"]
    assert sum(outcome["quarantined"].values()) < 16  # a real new style is mostly accepted

    wait_until(
        lambda: (
            stack.rollout()["canary_version"] == candidate
            and stack.rollout()["phase"] in ("canary", "promoting", "promoted")
        ),
        60,
        f"the router to start rolling out v{candidate}",
    )
    # everyday traffic from many users: the analysis compares the variants on the same kind
    # of input (a mix that differs between the two groups would skew mean confidence)
    with Traffic(stack, mnist_eval) as traffic:
        wait_until(
            lambda: stack.rollout()["phase"] in ("promoted", "rolled_back"),
            300,
            "the controller to decide",
        )
    rollout = stack.rollout()
    assert rollout["phase"] == "promoted", json.dumps(rollout, indent=1)
    assert traffic.by_variant().get("canary", 0) > 0  # the canary really answered users
    canary_answers = [a for a in traffic.answers if a[0] == "canary"]
    assert {version for _, version, _ in canary_answers} == {candidate}

    # the stable service hot-reloads the promoted version; nothing was restarted
    wait_until(
        lambda: httpx.get(f"{stack.url}/readyz").json()["served_versions"]["stable"] == candidate,
        120,
        "the stable service to serve the promoted version",
    )
    assert registry_aliases(stack.home)["stable"] == candidate
    after_style = read_batch(stack, style_eval, "evaluator")
    after_mnist = read_batch(stack, mnist_eval, "evaluator")
    assert after_style["answered_by"] == {("stable", candidate)}
    report = (
        f"style {before_style['accuracy']:.3f} -> {after_style['accuracy']:.3f}, "
        f"MNIST sample {before_mnist['accuracy']:.3f} -> {after_mnist['accuracy']:.3f}"
    )
    (ARTIFACTS / "e2e" / "whole-loop.txt").write_text(report + "\n")
    assert after_style["accuracy"] >= before_style["accuracy"] + 0.05, report
    assert after_mnist["accuracy"] >= before_mnist["accuracy"] - 0.01, report
    old, new = (mnist_accuracy(stack.home, v, mnist_dir) for v in ("1", candidate))
    assert new >= old - 0.003, f"MNIST test {old:.4f} -> {new:.4f}"  # the gate's 0.3 pp


def test_poisoned_batch_is_stopped_and_stable_is_unchanged(
    loop_stack: Stack, digits: Digits
) -> None:
    stack = loop_stack
    stable = registry_aliases(stack.home)["stable"]
    probe = digits.plain(range(3000, 3300))
    before = read_batch(stack, probe, "evaluator")
    last_job = (stack.trainer_status().get("last_job") or {}).get("job_id")
    quarantined_before = sample_stats(stack)["by_state"].get("quarantined", 0)

    poisoned = [(data, (label + 1) % 10) for data, label in digits.plain(range(2000, 2064))]
    upload(stack, poisoned, POISONER)

    def batch_handled() -> bool:
        status = stack.trainer_status()
        job = status.get("last_job") or {}
        quarantined = sample_stats(stack)["by_state"].get("quarantined", 0)
        done = job.get("job_id") != last_job or quarantined - quarantined_before >= 64
        return bool(done and status["pending"]["count"] == 0 and not status["running"])

    wait_until(batch_handled, 900, "the trainer to handle the poisoned batch")
    time.sleep(3)  # a canary, had one been registered, shows up in the rollout by now
    if stack.rollout()["phase"] in ("canary", "paused"):
        # a poisoned candidate got through validation and the gate: the rollout must stop it
        with Traffic(stack, probe):
            wait_until(
                lambda: stack.rollout()["phase"] in ("promoted", "rolled_back"),
                300,
                "the controller to decide on the poisoned canary",
            )
    stats = sample_stats(stack)
    quarantined = stats["by_state"].get("quarantined", 0) - quarantined_before
    rollout = stack.rollout()
    aliases = registry_aliases(stack.home)
    outcome = stack.trainer_status().get("last_outcome") or {}
    stopped = (
        quarantined >= 48  # most of the batch never reached training
        or outcome.get("status") == "rejected"
        or rollout["phase"] == "rolled_back"
    )
    assert stopped, (quarantined, outcome, rollout)
    assert set(stats["quarantine_reasons"]) & {"user_disagreement", "label_conflict"}
    assert aliases["stable"] == stable
    assert "canary" not in aliases
    after = read_batch(stack, probe, "evaluator")
    assert after["answered_by"] == {("stable", stable)}
    assert after["accuracy"] == before["accuracy"]
