"""The dashboard in a real browser: headless Debian Chromium driven by Playwright, against the governed deployment.

A prompt published through the page shows its tokens and risk as they stream in (server-sent events, no reload); a
rollback from the governance view changes the active version, and the service swaps; the page loads without a failed
request, spells out nested metrics, and says which service is missing when one is. Screenshots are saved in
``EVOSTREAM_SCREENSHOT_DIR`` when set (the README's comes from there), else beside the test's temporary files."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from evostream.models.suite.evaluate import eval_set
from evostream.producers.client import InferenceClient
from tests.api.conftest import TASK_ACCURACY, Deployment
from tests.api.test_api import infer

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No background traffic from the browser: this machine has no network beyond the package registries.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(tmp_path: Path) -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt install chromium (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = ctx.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        yield pg
        browser.close()
        assert errors == [], f"the page raised: {errors}"


def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("EVOSTREAM_SCREENSHOT_DIR") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_a_prompt_published_from_the_page_streams_its_tokens_and_risk(
    deployment: Deployment, page: object, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(deployment.url + "/")
    expect(page.locator("#status")).to_have_text("live", timeout=30_000)
    added: list[tuple[str, str]] = []
    page.expose_function("note", lambda trace, what: added.append((trace, what)))
    # note each token as it is added and the answer as it is shown, in order
    page.evaluate("""() => new MutationObserver((ms) => { for (const m of ms) for (const n of m.addedNodes) {
        const card = (n.nodeType === 1 ? n : n.parentElement)?.closest('.trace');
        if (!card) continue;
        const id = card.dataset.traceId;
        if (n.classList && n.classList.contains('tok')) window.note(id, n.dataset.step);
        else if (n.nodeType === 3 && n.parentElement.classList.contains('answer')) window.note(id, 'answer');
      } }).observe(document.getElementById('traces'), {childList: true, subtree: true})""")
    page.fill("#prompt", "reverse: dashboard")
    page.click("#send")
    mine = page.locator("#mine")
    expect(mine).to_contain_text("answer:", timeout=60_000)
    trace_id = mine.get_attribute("data-trace-id")
    assert trace_id
    card = page.locator(f'.trace[data-trace-id="{trace_id}"]')
    expect(card).to_have_class(re.compile(r"\bmine\b"), timeout=30_000)
    expect(card).to_have_class(re.compile(r"\bdone\b"), timeout=30_000)
    expect(card.locator(".risk")).to_contain_text("risk 0.", timeout=30_000)
    trace = httpx.get(f"{deployment.url}/traces/{trace_id}", timeout=30).json()
    tokens = card.locator(".tok")
    expect(tokens).to_have_count(trace["completion"]["token_count"])
    assert tokens.all_text_contents() == [s["token_text"] for s in trace["steps"]]  # the steps, in order, as text
    assert float(card.locator(".risk").get_attribute("data-score") or "nan") == pytest.approx(trace["risk"]["score"])
    # which policy judged the trace is on its badge
    assert card.locator(".risk").get_attribute("data-policy") == trace["risk"]["policy"]
    assert (card.locator(".risk").get_attribute("title") or "").startswith(f"judged by {trace['risk']['policy']}")
    ours = [what for t, what in added if t == trace_id]
    n = trace["completion"]["token_count"]
    # each token added once, by its own step event (the page draws nothing from /infer's answer; the completion and
    # the last steps travel apart, so either may come first)
    assert sorted(int(w) for w in ours if w != "answer") == list(range(n)) and ours.count("answer") == 1
    expect(page.locator("#rps")).to_have_text(re.compile(r"^\d+\.\d\d$"))  # the overview's rate, a number ...
    expect(page.locator("#rps")).not_to_have_text("0.00", timeout=10_000)  # ... updated by the completion's event
    expect(page.locator("#answering")).to_contain_text(deployment.v2)
    # enough traffic for the processors' first drift window of this version (reference 96 + window 48): its
    # statistics are plotted as they are published
    prompts = [e.prompt for e in eval_set()]
    with InferenceClient(deployment.settings.bootstrap_servers) as client:
        answers = client.infer_many([prompts[i % len(prompts)] for i in range(150)], timeout_s=120, max_new_tokens=8)
    assert all(a["error"] is None for a in answers)
    expect(page.locator("#drift-charts .chart").first).to_be_visible(timeout=90_000)
    names = page.locator("#drift-charts .chart").evaluate_all("cs => cs.map(c => c.dataset.statistic)")
    drift = httpx.get(f"{deployment.url}/drift", params={"model": deployment.v2}, timeout=30).json()
    assert drift and set(names) == {s["name"] for w in drift for s in w["statistics"]}
    page.screenshot(path=str(shots(tmp_path) / "dashboard.png"))
    page.screenshot(path=str(shots(tmp_path) / "dashboard-full.png"), full_page=True)


def test_the_page_loads_without_a_failed_request_and_spells_out_nested_metrics(
    deployment: Deployment, page: object
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    failed: list[str] = []  # the browser's own requests (its icon) show here, not as Playwright responses
    page.on("console", lambda m: failed.append(m.text) if m.type == "error" else None)
    page.goto(deployment.url + "/")
    expect(page.locator("#status")).to_have_text("live", timeout=30_000)
    metrics = page.locator(f'.node[data-version="{deployment.v1}"] .metrics')
    spelled = " ".join(f"{task}={accuracy}" for task, accuracy in TASK_ACCURACY.items())
    expect(metrics).to_contain_text(f"task_accuracy: {spelled}")
    expect(metrics).to_contain_text(f"parameters={deployment.parameters}")
    assert "[object Object]" not in page.locator("#lineage").inner_text()
    expect(page.locator("#notices")).to_be_empty()  # every service the panels need is running
    page.wait_for_timeout(1000)  # the icon is asked for after the page's load
    assert failed == []


def test_the_page_says_the_stream_processors_are_not_running(unprocessed: str, page: object, tmp_path: Path) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(unprocessed + "/")
    notice = "no risk reports, drift windows or profiles: the stream processors are not running (evostream process)"
    expect(page.locator("#notices .notice")).to_have_text([notice], timeout=30_000)
    expect(page.locator("#status")).to_have_text("live", timeout=30_000)  # the API itself works
    page.screenshot(path=str(shots(tmp_path) / "missing-processors.png"))


def test_a_rollback_from_the_governance_view_changes_the_active_version(
    deployment: Deployment, page: object, tmp_path: Path
) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    page.goto(deployment.url + "/")
    try:
        rollback_from_the_page(deployment, page, tmp_path)
    finally:
        deployment.restore()


def rollback_from_the_page(deployment: Deployment, page: object, tmp_path: Path) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    active = page.locator("#active")
    expect(active).to_contain_text(f"{deployment.model}: {deployment.v2}", timeout=30_000)
    expect(page.locator(f'.node[data-version="{deployment.v1}"]')).to_be_visible()
    page.fill("#actor-key", deployment.admin_token)
    page.dispatch_event("#actor-key", "change")
    page.select_option("#rb-model", deployment.model)
    page.select_option("#rb-to", deployment.v1)
    page.fill("#rb-reason", "rolled back from the dashboard")
    page.click("#rb-go")
    expect(page.locator("#gov-result")).to_contain_text("RolledBack", timeout=30_000)
    expect(active).to_contain_text(f"{deployment.model}: {deployment.v1}", timeout=30_000)
    expect(page.locator("#timeline li").first).to_contain_text("rolled back from the dashboard")
    assert deployment.admin_token.split(".")[-1] not in page.locator("body").inner_text()  # the key is never shown
    page.screenshot(path=str(shots(tmp_path) / "governance.png"), full_page=True)
    deployment.wait_serving(deployment.v1)
    # a wrong key is refused, and the page says so
    page.fill("#actor-key", ".".join([*deployment.admin_token.split(".")[:-1], "0" * 128]))  # right form, wrong key
    page.dispatch_event("#actor-key", "change")
    page.select_option("#rb-to", deployment.v2)
    page.click("#rb-go")
    expect(page.locator("#gov-result")).to_contain_text("401: the token does not match")


def test_a_trace_labelled_from_the_page_is_one_outcome_even_when_the_request_is_retried(
    kafka: str, deployment: Deployment, page: object
) -> None:
    from playwright.sync_api import Page, Route, expect

    from tests.api.test_feedback import outcomes_of

    assert isinstance(page, Page)
    trace_id = infer(deployment, "sort: dcba")["trace_id"]
    page.goto(deployment.url + "/")
    expect(page.locator("#status")).to_have_text("live", timeout=30_000)
    page.fill("#actor-key", deployment.alice_token)
    page.dispatch_event("#actor-key", "change")
    card = page.locator(f'.trace[data-trace-id="{trace_id}"]')
    expect(card).to_be_visible(timeout=30_000)
    # the first try reaches the server, but its answer is lost on the way back: the page tries again, same key
    tries: list[str] = []

    def lose_first_answer(route: Route) -> None:
        tries.append(route.request.headers.get("idempotency-key", ""))
        response = route.fetch()
        if len(tries) == 1:
            route.fulfill(status=502, body="lost")
        else:
            route.fulfill(response=response)

    page.route("**/feedback", lose_first_answer)
    card.locator("button.judge.wrong").click()
    expect(card.locator(".verdict")).to_have_text("wrong (alice)", timeout=30_000)
    assert len(tries) == 2 and tries[0] == tries[1] != ""
    book = outcomes_of(kafka, trace_id)
    assert book.retries == 1
    assert [(s.actor, s.label) for s in book.labels(trace_id)] == [("alice", "WRONG")]


def test_the_routes_panel_follows_decisions_as_they_come_with_the_cost_against_the_reference(
    kafka: str, page: object, tmp_path: Path
) -> None:
    """An API with a price table, and a routed history published while the page is open: the panel's row of the
    route fills in from the stream (no reload), with its self-share, escalation and cost against the reference."""
    from playwright.sync_api import Page, expect

    from evostream.api.config import ApiConfig
    from evostream.core.clock import now_us
    from evostream.core.settings import load_settings
    from tests.api.conftest import HOSTS, served
    from tests.views.route_log import REF, SELF, TABLE, publish, route_log, write_prices

    assert isinstance(page, Page)
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        bootstrap_servers=kafka,
        governance_dir=tmp_path / "gov",
        governance_topic=f"test-dashboard-routes-{run}",
        route_prices=write_prices(tmp_path / "prices.json"),
    )
    log = route_log(f"panel-{run}", now_us())
    with served(ApiConfig(kafka, settings, allowed_hosts=HOSTS, trust_loopback=True)) as url:
        page.goto(url + "/")
        # the first read of /routes: "n of m" escalated (a dash before it)
        expect(page.locator("#escalations")).to_have_text(re.compile(r"^\d+ of \d+$"), timeout=30_000)
        row = page.locator(f'#route-table tr[data-route="{log.route}"] td')
        expect(row).to_have_count(0)
        publish(kafka, log)
        one = TABLE.cost(REF, 100, 20)
        paid = TABLE.cost(SELF, 100, 20) + TABLE.cost(SELF, 100, 5) + 2 * one
        want = ["5", "1", "2", "1", "1", "1", "33.3%", f"{paid:.6f}", f"{4 * one:.6f}", f"{4 * one - paid:.6f}"]
        expect(row).to_have_text([log.route, *want], timeout=30_000)
        total = httpx.get(url + "/routes", timeout=30).json()["total"]
        share = "\u2013" if total["self_share"] is None else f"{100 * total['self_share']:.1f}%"
        expect(page.locator("#self-share")).to_have_text(share, timeout=10_000)
        expect(page.locator("#cost-vs-reference")).to_contain_text(f"{total['reference_usd']:.6f}", timeout=10_000)
        page.locator("#routes").screenshot(path=str(shots(tmp_path) / "routes.png"))
        page.goto("about:blank")  # the page's event stream closed before the API stops
