"""The web page in a real browser (Debian's Chromium driven by Playwright) against a stack
started with `inkwell up`: draw a digit, teach, read a cheque, watch and steer the rollout.
Each page state is saved as a screenshot under test-artifacts/web/."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.e2e.stack import (
    ADMIN_KEY,
    API_KEY,
    ARTIFACTS,
    Stack,
    register_digits,
    registry_aliases,
)
from tests.harness import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SHOTS = ARTIFACTS / "web"
Point = tuple[float, float]


@pytest.fixture(scope="module")
def web_stack(
    tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path, base_weights: dict[str, torch.Tensor]
) -> Iterator[Stack]:
    """One stack for the module: v1 is stable, v2 is registered (the canary-to-be), and the
    cheque reader is the shipped one that `inkwell up` seeds the empty cheque registry with."""
    home = tmp_path_factory.mktemp("web") / "home"
    home.mkdir()
    register_digits(home, base_weights, ("stable",))
    register_digits(home, base_weights, (), note="candidate")
    stack = Stack(
        home=home,
        mnist=mnist_dir,
        log_path=ARTIFACTS / "web" / "inkwell-up.log",
        # a slow analysis: the rollout moves only when the test presses the buttons
        settings={
            "INKWELL_ROUTER_ANALYSIS_INTERVAL_S": "600",
            "INKWELL_ROUTER_ROLLOUT_STEPS": "10,50,100",
            "INKWELL_ROUTER_CHEQUE_ROLLOUT": "true",  # the cheque model's own rollout too
        },
    )
    try:
        yield stack.start(300.0)
    finally:
        stack.stop(timeout=30)
        stack.kill()
        stack.save_logs()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, web_stack: Stack, request: pytest.FixtureRequest):
    """A fresh browser context on the page, with the keys typed into the page's fields, and a
    record of every URL the page asked for."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    page.requested = []  # type: ignore[attr-defined]
    page.on("request", lambda r: page.requested.append(r.url))  # type: ignore[attr-defined]
    page.goto(web_stack.url + "/")
    page.fill("#api-key", API_KEY)
    page.fill("#admin-key", ADMIN_KEY)
    page.fill("#user-id", f"browser-{request.node.name[:40]}")
    page.click("#keys-toggle")  # close the keys panel
    yield page
    context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def draw(page, *strokes: list[Point]) -> None:
    """Draw strokes on the 280x280 pad with real mouse events (pad coordinates)."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
        page.mouse.up()


ONE = [(140.0, 40.0), (140.0, 240.0)]
ZERO = [
    (140 + 68 * math.sin(2 * math.pi * t / 24), 140 - 95 * math.cos(2 * math.pi * t / 24))
    for t in range(25)
]


def answered(page) -> dict[str, str]:
    page.wait_for_selector("#answer[data-state='answered']", timeout=30_000)
    return {
        "digit": page.inner_text("#answer-digit"),
        "meta": page.inner_text("#answer-meta"),
    }


def test_page_is_served_by_the_router_and_loads_nothing_from_elsewhere(page, web_stack) -> None:
    page.wait_for_selector("#pill-stable:has-text('stable v1')")
    page.wait_for_selector("#phase[data-phase='idle']")
    shot(page, "01-start")
    assert page.title() == "Inkwell"
    foreign = [url for url in page.requested if not url.startswith(web_stack.url)]
    assert foreign == []  # no CDN: the page works offline


def test_keys_stay_with_the_tab_and_the_page_obeys_its_security_policy(page, web_stack) -> None:
    keys = "['inkwell.api_key', 'inkwell.admin_key']"
    assert page.evaluate(f"{keys}.map((k) => sessionStorage.getItem(k))") == [API_KEY, ADMIN_KEY]
    assert page.evaluate(f"{keys}.map((k) => localStorage.getItem(k))") == [None, None]
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Security Policy" in m.text else None)
    reloaded = page.reload()
    assert "frame-ancestors 'none'" in reloaded.headers["content-security-policy"]
    assert reloaded.headers["x-frame-options"] == "DENY"
    page.wait_for_selector("#pill-stable:has-text('stable v1')")
    draw(page, ONE)
    assert answered(page)["digit"] == "1"
    assert page.input_value("#api-key") == API_KEY  # a reload keeps them for the tab
    assert blocked == []
    other_tab = page.context.new_page()
    other_tab.goto(web_stack.url + "/")
    assert other_tab.input_value("#api-key") == ""  # a new tab starts without them
    other_tab.close()


def test_drawing_a_one_is_read_as_one_with_who_answered(page) -> None:
    draw(page, ONE)  # releasing the mouse sends the drawing
    result = answered(page)
    shot(page, "02-drew-a-one")
    assert result["digit"] == "1"
    assert "answered by stable model v1" in result["meta"]
    bars = page.locator("#bars .bar")
    assert bars.count() == 10
    assert page.locator("#bars .bar.top").get_attribute("data-digit") == "1"


def test_drawing_a_zero_is_read_as_zero(page) -> None:
    draw(page, ZERO)
    assert answered(page)["digit"] == "0"
    shot(page, "03-drew-a-zero")


def test_teaching_stores_the_drawing_with_its_label_and_user(page, web_stack) -> None:
    draw(page, ONE)
    answered(page)
    page.click("#teach-digits button[data-digit='7']")  # "no, it is a 7" (a correction)
    page.wait_for_selector("#teach-result.ok", timeout=30_000)
    text = page.inner_text("#teach-result")
    shot(page, "04-taught")
    assert "Stored as sample #" in text and "label 7" in text
    user = page.input_value("#user-id")
    stats = httpx.get(
        f"{web_stack.url}/v1/samples/stats", headers={"X-API-Key": API_KEY}, timeout=30
    ).json()
    assert stats["by_user"][user] == 1
    page.wait_for_function(
        "Number(document.getElementById('s-waiting').textContent) >= 1", timeout=30_000
    )
    shot(page, "05-learning-panel")


def test_teaching_without_the_api_key_says_what_to_do(page) -> None:
    page.click("#keys-toggle")
    page.fill("#api-key", "")
    draw(page, ONE)
    answered(page)
    page.click("#confirm")
    page.wait_for_selector("#teach-result.err")
    assert "needs the API key" in page.inner_text("#teach-result")
    page.fill("#api-key", "not-the-key")
    page.click("#confirm")
    page.wait_for_selector("#teach-result.err:has-text('Not stored')")
    assert "X-API-Key is not valid" in page.inner_text("#teach-result")
    shot(page, "06-teach-refused")


def test_a_wrong_admin_key_locks_the_rollout_panel(page) -> None:
    page.click("#keys-toggle")
    page.fill("#admin-key", "wrong")
    page.wait_for_selector("#rollout-locked:has-text('Admin key not accepted')")
    assert page.locator("#rollout-body").is_hidden()


def test_a_cheque_amount_is_read_and_its_characters_boxed(page, web_stack, tmp_path) -> None:
    from PIL import Image

    from inkwell.cheques.pools import load_pool
    from inkwell.cheques.synth import generate_fields

    # the shipped cheque reader's accuracy is measured elsewhere (its model card): this test is
    # about the page, so it uses the first of a few amounts that model reads
    image = tmp_path / "amount.png"
    answers = []
    for field in generate_fields(load_pool("test", web_stack.mnist), 8, seed=7):
        Image.fromarray(field.image).save(image)
        expected = httpx.post(
            f"{web_stack.url}/v1/cheques/read",
            content=image.read_bytes(),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        answers.append(f"{expected.status_code} {expected.text[:120]}")
        if expected.status_code == 200:
            break
    assert expected.status_code == 200, "\n".join(answers)
    reading = expected.json()
    assert reading["characters"], reading  # the model found digits to box

    page.set_input_files("#cheque-file", str(image))
    page.wait_for_selector("#cheque-result[data-state='read']", timeout=60_000)
    shot(page, "07-cheque")
    assert page.inner_text("#cheque-result .amount") == reading["amount"]
    assert page.get_attribute("#cheque-canvas", "data-boxes") == str(len(reading["characters"]))
    review = "needs human review" if reading["needs_review"] else "auto-accepted"
    assert review in page.inner_text("#cheque-result")
    assert f"model v{reading['model_version']}" in page.inner_text("#cheque-result")
    # the boxes are drawn on the image: the canvas differs from the plain upload
    drawn = page.evaluate(
        """() => { const c = document.getElementById('cheque-canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let boxed = 0;  // blue boxes (sure) or orange ones (unsure)
                   for (let i = 0; i < d.length; i += 4) {
                     const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
                     if ((b > 150 && r < 100) || (r > 150 && g > 70 && g < 140 && b < 60)) boxed++;
                   }
                   return boxed; }"""
    )
    assert drawn > 0


def test_a_blank_amount_box_is_refused_with_the_reason(page, web_stack, tmp_path) -> None:
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("L", (320, 64), 255).save(blank)
    refusal = httpx.post(
        f"{web_stack.url}/v1/cheques/read",
        content=blank.read_bytes(),
        headers={"content-type": "image/png"},
        timeout=60,
    )
    assert refusal.status_code == 422  # never an invented amount
    page.set_input_files("#cheque-file", str(blank))
    page.wait_for_selector("#cheque-result[data-state='error']", timeout=60_000)
    assert page.inner_text("#cheque-result") == refusal.json()["message"]


def test_rollout_panel_shows_the_canary_and_its_buttons_steer_it(page, web_stack) -> None:
    from inkwell.registry import Registry
    from inkwell.settings import CoreSettings

    page.wait_for_selector("#phase[data-phase='idle']")
    Registry(CoreSettings(home=web_stack.home)).set_alias("inkwell-digits", "canary", "2")
    page.wait_for_selector("#phase[data-phase='canary']", timeout=60_000)
    page.wait_for_selector("#pill-canary:has-text('canary v2')", timeout=60_000)
    assert page.inner_text("#r-canary") == "v2"
    assert page.inner_text("#r-weight") == "10 %"
    page.wait_for_selector("#versions tr[data-version='2'] .alias.canary")
    shot(page, "08-canary")

    page.click("#act-pause")
    page.wait_for_selector("#phase[data-phase='paused']")
    assert page.locator("#act-resume").is_enabled() and page.locator("#act-pause").is_disabled()
    shot(page, "09-paused")

    page.click("#act-resume")
    page.wait_for_selector("#phase[data-phase='canary']")

    page.click("#act-rollback")
    page.wait_for_selector("#phase[data-phase='rolled_back']", timeout=60_000)
    page.wait_for_selector("#events li:has-text('rolled_back')")
    assert page.locator("#act-promote").is_disabled()
    shot(page, "10-rolled-back")
    wait_until(lambda: "canary" not in registry_aliases(web_stack.home), 30, "alias removal")
    assert registry_aliases(web_stack.home)["stable"] == "1"


def test_rollout_panel_shows_the_cheque_rollout_next_to_the_digit_one(page, web_stack) -> None:
    page.wait_for_selector("#cheque-phase[data-phase='idle']", timeout=60_000)
    page.wait_for_selector("#rc-stable:has-text('v1')", timeout=60_000)  # the seeded reader
    assert page.inner_text("#rc-canary") == "none"
    assert page.inner_text("#rc-weight") == "0 %"
    assert page.inner_text("#cheque-verdict") == "No analysis yet."
    assert page.locator("#cact-promote").is_disabled()  # nothing to steer without a canary
    shot(page, "11-cheque-rollout")


def test_the_cheque_rollout_buttons_steer_the_cheque_canary_alone(page, web_stack) -> None:
    import tempfile

    import inkwell.shipped
    from inkwell.cheques.reader import ChequeReader
    from inkwell.registry import Registry
    from inkwell.settings import CoreSettings

    page.wait_for_selector("#cheque-phase[data-phase='idle']", timeout=60_000)
    registry = Registry(CoreSettings(home=web_stack.home))
    reader = ChequeReader.from_dir(Path(inkwell.shipped.__file__).parent / "cheques")
    with registry.start_run("cheque-canary") as run, tempfile.TemporaryDirectory() as tmp:
        info = registry.register_files(
            "inkwell-cheques",
            run.info.run_id,
            reader.save(Path(tmp)),
            reader.meta,
            aliases=("canary",),
        )
    page.wait_for_selector("#cheque-phase[data-phase='canary']", timeout=60_000)
    assert page.inner_text("#rc-canary") == f"v{info.version}"
    digit_phase = page.get_attribute("#phase", "data-phase")

    page.click("#cact-pause")
    page.wait_for_selector("#cheque-phase[data-phase='paused']")
    assert page.locator("#cact-resume").is_enabled() and page.locator("#cact-pause").is_disabled()
    page.click("#cact-resume")
    page.wait_for_selector("#cheque-phase[data-phase='canary']")

    page.click("#cact-rollback")
    page.wait_for_selector("#cheque-phase[data-phase='rolled_back']", timeout=60_000)
    assert page.locator("#cact-promote").is_disabled()
    assert "rollback: done" in page.inner_text("#cheque-rollout-notice")
    assert page.get_attribute("#phase", "data-phase") == digit_phase  # the digit one untouched
    shot(page, "11b-cheque-rolled-back")

    def cheque_aliases() -> dict[str, str]:
        current = Registry(CoreSettings(home=web_stack.home))
        return {
            alias: v.version
            for v in current.list_versions("inkwell-cheques")
            for alias in v.aliases
        }

    wait_until(lambda: "canary" not in cheque_aliases(), 30, "cheque canary alias removal")
    assert cheque_aliases()["stable"] == "1"


def read_field(
    web_stack: Stack, tmp_path: Path, *, needs_review: bool, seed: int
) -> tuple[Path, str, dict[str, Any]]:
    """The first synthetic field the stack's cheque model reads (and, with `needs_review`,
    sends to review), read through the router like any client (so a doubtful reading is in
    the review queue), with its true amount. Tests use their own `seed`: an image stored with
    one amount and uploaded again with another is quarantined (conflicting_amount)."""
    from PIL import Image

    from inkwell.cheques.pools import load_pool
    from inkwell.cheques.synth import generate_fields

    image = tmp_path / "doubtful.png"
    seen = []
    for field in generate_fields(load_pool("test", web_stack.mnist), 40, seed=seed):
        Image.fromarray(field.image).save(image)
        response = httpx.post(
            f"{web_stack.url}/v1/cheques/read",
            content=image.read_bytes(),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        seen.append(f"{response.status_code} {response.text[:100]}")
        if response.status_code == 200 and (response.json()["needs_review"] or not needs_review):
            return image, field.label, response.json()
    pytest.fail("none of 40 synthetic fields was read (or sent to review):\n" + "\n".join(seen))


def cheque_stats(web_stack: Stack) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(
        f"{web_stack.url}/v1/cheques/samples/stats", headers={"X-API-Key": API_KEY}, timeout=30
    ).json()
    return stats


def test_review_queue_shows_a_doubtful_reading_and_the_typed_amount_is_stored(
    page, web_stack, tmp_path
) -> None:
    _image, truth, reading = read_field(web_stack, tmp_path, needs_review=True, seed=11)
    item = f"#reviews .review-item[data-reading='{reading['reading_id']}']"
    page.wait_for_selector(item, timeout=30_000)  # the queue polls the service
    assert page.evaluate(f'document.querySelector("{item} img").naturalWidth') > 0
    assert reading["amount"] in page.inner_text(f"{item} .read")
    shot(page, "11-review-queue")

    page.fill(f"{item} input", f"{truth[:-2]},{truth[-2:]}-" if len(truth) > 2 else truth)
    page.click(f"{item} button[type='submit']")
    page.wait_for_selector("#review-result.ok", timeout=30_000)
    text = page.inner_text("#review-result")
    assert "Stored as reviewed sample #" in text and f"amount {truth}" in text
    page.wait_for_selector(item, state="detached", timeout=30_000)
    shot(page, "12-reviewed")
    user = page.input_value("#user-id")
    assert cheque_stats(web_stack)["by_user"][user] == 1
    queue = httpx.get(
        f"{web_stack.url}/v1/cheques/reviews", headers={"X-API-Key": API_KEY}, timeout=30
    ).json()["reviews"]
    assert reading["reading_id"] not in {r["reading_id"] for r in queue}


def test_any_reading_can_be_corrected_from_the_cheque_card(page, web_stack, tmp_path) -> None:
    image, _truth, _reading = read_field(web_stack, tmp_path, needs_review=False, seed=23)
    before = cheque_stats(web_stack)["corrections"]["with_reading"]
    page.set_input_files("#cheque-file", str(image))
    page.wait_for_selector("#cheque-result[data-state='read']", timeout=60_000)
    page.wait_for_selector("#correct:not([hidden])")
    page.fill("#correct-amount", "12.345,-")
    page.click("#correct-save")
    page.wait_for_selector("#correct-result.ok", timeout=30_000)
    assert "amount 12345" in page.inner_text("#correct-result")
    shot(page, "13-corrected")
    stats = cheque_stats(web_stack)
    assert stats["by_user"][page.input_value("#user-id")] == 1
    assert stats["corrections"]["with_reading"] == before + 1


def test_saving_a_correction_without_the_api_key_says_what_to_do(page, web_stack, tmp_path) -> None:
    image, _truth, _reading = read_field(web_stack, tmp_path, needs_review=False, seed=31)
    page.set_input_files("#cheque-file", str(image))
    page.wait_for_selector("#correct:not([hidden])", timeout=60_000)
    page.click("#keys-toggle")
    page.fill("#api-key", "")
    page.fill("#correct-amount", "100")
    page.click("#correct-save")
    page.wait_for_selector("#correct-result.err")
    assert "needs the API key" in page.inner_text("#correct-result")
    assert page.locator("#review-locked").is_visible()
