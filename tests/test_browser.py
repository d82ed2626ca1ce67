"""End to end in a real browser: `streamlit run app/main.py` on the embedded model, driven by
Debian's chromium through playwright, at 1440x900 and 1280x720 (screenshots in tests/artifacts/).

The first open (the demo adapters built in the background, then selected, four models on the
first example), the token strip as the position control (a click selects, a hover card, it wraps),
state in the URL (a reload and another page keep it), and the two speeds the issue sets targets
for: Enter -> token strip for a ~64-token prompt (model loaded), and alpha change -> updated view.
The demo is the shipped config cut to one step per phase (the story, not the numbers, is tested).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
HP = "Harry Potter's two best friends are Ron and"
LONG = ("Harry Potter walked into the Great Hall at Hogwarts with Ron Weasley and Hermione Granger, where "
        "Professor Dumbledore was waiting to announce the start of the Quidditch season and the return of "
        "the Triwizard Tournament. Hagrid smiled at them from the staff table while Snape frowned. Then")

pytestmark = [pytest.mark.browser, pytest.mark.slow]
# assets/demo.yaml cut to seconds: the page's story is tested here, the demo's numbers elsewhere.
QUICK_DEMO = {"reinforce.steps": 1, "unlearn.steps": 1, "data.block_size": 32, "data.max_blocks": 2,
              "train.batch_size": 2, "probe_every": 1, "whp.alphas": [5.0], "retain.text": None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make browser` (apt-get install chromium) enables this test")
    pytest.importorskip("playwright.sync_api")
    tmp = tmp_path_factory.mktemp("browser")
    anchors = tmp / "anchors.json"
    shutil.copy(ROOT / "assets" / "demo_anchors.json", anchors)
    env = {k: v for k, v in os.environ.items() if k != "OBLIVIATE_MODEL"}  # the embedded model
    env.update(OBLIVIATE_HOME=str(tmp / "home"), OBLIVIATE_ANCHORS=str(anchors))
    # The demo run starts before the server, as the first `make run` starts it: the app finds it
    # running, shows its progress and selects its adapters once it is done.
    from engine import jobs

    saved_home = os.environ.get("OBLIVIATE_HOME")
    os.environ["OBLIVIATE_HOME"] = env["OBLIVIATE_HOME"]
    try:
        demo = jobs.launch_demo("embedded", QUICK_DEMO)
    finally:
        if saved_home is None:
            os.environ.pop("OBLIVIATE_HOME")
        else:
            os.environ["OBLIVIATE_HOME"] = saved_home
    port = _free_port()
    log = open(tmp / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start: {(tmp / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url, anchors, demo.dir
    finally:
        if jobs.read_status(demo.dir).active:
            jobs.cancel(demo.dir)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def demo_ready(server):
    """The demo adapters, finished: a test that needs the expert and the unlearned model waits here, so
    it passes run alone as well as after the first-open test (which watches the build instead)."""
    from engine import jobs

    deadline = time.time() + 600
    while (status := jobs.read_status(server[2])).active and time.time() < deadline:
        time.sleep(1)
    assert status.state == "finished", f"the demo run {status.state}: {status.error}"


_WEBSOCKETS: list = []


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        pg = browser.new_page(viewport={"width": 1440, "height": 900})
        pg.on("websocket", lambda ws: _WEBSOCKETS.append(ws))
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _submit(page, prompt: str) -> float:
    """Type a prompt, press Enter; seconds until its token strip is on screen."""
    box = page.get_by_role("textbox", name="Prompt")
    box.fill(prompt)
    t0 = time.perf_counter()
    box.press("Enter")
    page.wait_for_function(
        "tail => { const s = document.querySelector('.obl-strip');"
        " return s && s.textContent.endsWith(tail); }", arg=prompt[-12:], timeout=120_000)
    return time.perf_counter() - t0


def _slider(page, label: str):
    return page.locator('[data-testid="stSlider"]').filter(has_text=label).get_by_role("slider")


# The sidebar's pickers hold the demo's adapters (the URL mirrors them, as the symbol `demo`).
DEMO_PICKED = ("() => { const q = new URL(location.href).searchParams;"
               " return q.get('expert') === 'demo' && q.get('unlearned') === 'demo'; }")


def _selected(page, pos: int, timeout: float = 60_000) -> None:
    page.locator(f'.obl-strip .tok.sel[data-pos="{pos}"]').wait_for(timeout=timeout)


def test_first_open_the_strip_and_state_in_the_url(server, page):
    """The teacher's first minute: the demo adapters arrive by themselves, the first example shows
    four models; a click on a token selects it; the view survives a reload and another page."""
    url = server[0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    example = json.loads((ROOT / "assets" / "probes.json").read_text())["probability"][0]["prompt"]
    page.goto(url)
    page.get_by_text("MiB of weights").wait_for(timeout=240_000)
    page.get_by_text("Start here:").wait_for()
    sidebar = page.locator('[data-testid="stSidebar"]')
    building = sidebar.get_by_text("Building the demo adapters")
    saw_progress = building.count() > 0
    if saw_progress:
        page.screenshot(path=str(ARTIFACTS / "first_open_building_1440.png"))
    # Selected by default as soon as the demo run finishes (the page reruns by itself).
    page.wait_for_function(DEMO_PICKED, timeout=300_000)
    sidebar.get_by_text("2 adapter(s) loaded").wait_for()

    page.get_by_role("button", name=example, exact=True).first.click()
    page.wait_for_function("tail => { const s = document.querySelector('.obl-strip');"
                           " return s && s.textContent.endsWith(tail); }", arg=example[-12:], timeout=120_000)
    heads = page.locator(".obl-topk th[data-model]")
    heads.nth(3).wait_for()
    assert [h.get_attribute("data-model") for h in heads.all()] == ["baseline", "expert", "generic", "unlearned"]
    page.get_by_text("(baseline / expert / generic / unlearned)").first.wait_for()  # the headline numbers
    table = page.locator(".obl-topk").bounding_box()
    assert table["y"] < 900, f"the results start below the fold at 1440x900: {table}"
    page.wait_for_timeout(800)  # the bar chart's drawing
    page.screenshot(path=str(ARTIFACTS / "first_open_1440.png"))

    # The strip is the control: a click selects, a hover card tells every model's p and rank.
    page.locator('.obl-strip .tok[data-pos="2"]').click()
    _selected(page, 2)
    page.get_by_text(re.compile(r"position 2 · next")).first.wait_for()
    page.locator('.obl-strip .tok[data-pos="4"]').hover()
    card = page.locator(".obl-card")
    card.wait_for(state="visible")
    assert "baseline" in card.inner_text() and "rank" in card.inner_text() and "unlearned" in card.inner_text()
    page.screenshot(path=str(ARTIFACTS / "strip_hover_1440.png"))
    page.mouse.move(5, 5)

    # State that stays: the URL carries the view; a reload and a round trip through Anchors keep it.
    page.wait_for_function("() => new URL(location.href).searchParams.get('pos') === '2'")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))
    assert query["prompt"] == example and query["expert"] == "demo", query
    page.reload()
    _selected(page, 2, timeout=120_000)
    box = page.get_by_role("textbox", name="Prompt")
    for _ in range(50):  # the box is filled from the session a moment after the strip: wait, do not race it
        if box.input_value() == example:
            break
        page.wait_for_timeout(200)
    assert box.input_value() == example
    sidebar.get_by_text("2 adapter(s) loaded").wait_for()
    page.get_by_role("link", name="Anchors").click()
    page.locator(".obl-align").wait_for(timeout=120_000)
    page.get_by_role("link", name="Inspect").click()
    _selected(page, 2, timeout=120_000)

    # 1280x720, a 61-token prompt: the strip wraps, the selected token and four columns fit.
    page.set_viewport_size({"width": 1280, "height": 720})
    _submit(page, LONG)
    last = page.locator(".obl-strip .tok").count() - 1
    _selected(page, last)
    fit = page.evaluate("""() => { const s = document.querySelector('.obl-strip');
        const t = document.querySelector('.obl-topk'); const sel = s.querySelector('.tok.sel').getBoundingClientRect();
        return {over: s.scrollWidth - s.clientWidth, lines: Math.round(s.getBoundingClientRect().height / 30),
                selRight: sel.right, tableOver: t.scrollWidth - t.parentElement.clientWidth}; }""")
    assert fit["over"] <= 1 and fit["lines"] >= 2, fit
    assert fit["selRight"] <= 1280 and fit["tableOver"] <= 1, fit
    cut = page.evaluate("() => Array.from(document.querySelectorAll('.obl-topk .cell .t'))"
                        ".filter(t => t.scrollWidth > t.clientWidth + 1).map(t => t.textContent)")
    assert not cut, f"tokens cut at 1280 px: {cut}"  # was "' Em…'"
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "inspect_1280.png"))
    print(f"\nfirst open: demo progress seen on the page: {saw_progress}; 1280x720 fit: {fit}")
    page.set_viewport_size({"width": 1440, "height": 900})


def test_inspect_in_the_browser(server, demo_ready, page):
    url = server[0]
    page.goto(url)
    page.get_by_text("MiB of weights").wait_for(timeout=240_000)  # the embedded model is loaded
    page.wait_for_function(DEMO_PICKED, timeout=120_000)  # the expert: alpha below needs it

    _submit(page, HP)
    # Select the last position explicitly (it is also the default) and read the baseline column.
    n = page.locator(".obl-strip .tok").count()
    position = _slider(page, "Position")
    position.focus()
    position.press("End")
    page.locator(f'.obl-strip .tok.sel[data-pos="{n - 1}"]').wait_for()
    top = page.locator('.obl-topk td[data-model="baseline"][data-rank="1"]')
    assert top.get_attribute("data-token") == "' Herm'", f"baseline top-1 after {HP!r}: {top.inner_text()}"
    assert float(top.get_attribute("data-p")) > 0.5
    assert page.locator(".obl-strip .tok.term").count() >= 3  # Harry, Potter, Ron are anchored

    # Speed 1: a ~64-token prompt, model loaded, nothing cached.
    first_inspect = _submit(page, LONG)
    tokens = page.locator(".obl-strip .tok").count()

    # Speed 2: alpha changes re-view the cached inspection (no forward).
    # The browser sends the rerun request after the slider's own delay; the websocket frame's time
    # splits the figure into that delay and server + rendering.
    sent: list[float] = []
    for ws in _WEBSOCKETS:
        ws.on("framesent", lambda _payload: sent.append(time.perf_counter()))
    alpha = _slider(page, "alpha")
    times, after_send = [], []
    for k in range(1, 6):
        alpha.focus()
        sent.clear()
        t0 = time.perf_counter()
        alpha.press("ArrowRight")
        page.locator(f'.obl-strip[data-alpha="{5 + 0.5 * k:g}"]').wait_for()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if sent:
            after_send.append(t1 - sent[0])
    alpha_s = statistics.median(times)

    # Speed 3: a click on a token of the cached ~64-token prompt, without and with the lens open (the
    # lens reads the clicked position from hidden states the one forward kept: no new forward).
    def click(k: int, lens: bool) -> float:
        t0 = time.perf_counter()
        page.locator(f'.obl-strip .tok[data-pos="{k}"]').click()
        page.locator(f'.obl-strip .tok.sel[data-pos="{k}"]').wait_for()
        page.get_by_text(re.compile(rf"· position {k} ·")).first.wait_for()
        if lens:
            page.get_by_text(re.compile(rf"\(position {k}\): the probability after each block")).wait_for()
        return time.perf_counter() - t0

    plain_clicks = [click(k, False) for k in (10, 20, 30, 40)]
    page.get_by_text("Lens", exact=True).click()
    page.get_by_text("Layer by layer (logit lens)").wait_for(timeout=120_000)
    lens_clicks = [click(k, True) for k in (11, 21, 31, 41)]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.get_by_text("Layer by layer (logit lens)").scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "lens_1440.png"))
    page.get_by_text("Lens", exact=True).click()
    page.get_by_text("Layer by layer (logit lens)").wait_for(state="detached")
    click_s, lens_click_s = statistics.median(plain_clicks), statistics.median(lens_clicks)

    # The keyboard: the selected token is the strip's one tab stop; arrows move, Enter selects.
    sel = page.locator(".obl-strip .tok.sel")
    assert sel.get_attribute("tabindex") == "0" and page.locator('.obl-strip .tok[tabindex="0"]').count() == 1
    assert re.match(r"position \d+, .*baseline p \d\.\d{3} rank \d+", sel.get_attribute("aria-label"))
    k = int(sel.get_attribute("data-pos"))
    sel.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    _selected(page, k + 1)

    # Speed 4: a long passage (~400 tokens): Enter to strip, a click, an alpha step.
    passage = " ".join((ROOT / "assets" / "demo_corpus.txt").read_text().split()[:300])
    long_enter = _submit(page, passage)
    long_tokens = page.locator(".obl-strip .tok").count()
    long_clicks = [click(k, False) for k in (50, 150, 250)]
    long_alpha = []
    alpha = _slider(page, "alpha")
    start = float(page.locator(".obl-strip").get_attribute("data-alpha"))
    for k in range(1, 4):
        alpha.focus()
        t0 = time.perf_counter()
        alpha.press("ArrowLeft")
        page.locator(f'.obl-strip[data-alpha="{start - 0.5 * k:g}"]').wait_for()
        long_alpha.append(time.perf_counter() - t0)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _submit(page, HP)
    # Streamlit scrolls inside its own container: a tall viewport shows the whole page.
    page.set_viewport_size({"width": 1440, "height": 2600})
    page.wait_for_timeout(1500)  # let the Plotly chart finish drawing
    page.screenshot(path=str(ARTIFACTS / "inspect.png"))
    page.set_viewport_size({"width": 1440, "height": 900})
    load = os.getloadavg()[0]
    result = {"prompt_tokens": tokens, "enter_to_strip_s": round(first_inspect, 3),
              "alpha_to_view_s_median": round(alpha_s, 3), "alpha_to_view_s": [round(t, 3) for t in times],
              "alpha_request_to_view_s_median": round(statistics.median(after_send), 3) if after_send else None,
              "click_s_median": round(click_s, 3), "lens_click_s_median": round(lens_click_s, 3),
              "lens_click_ratio": round(lens_click_s / click_s, 3),
              "long_prompt_tokens": long_tokens, "long_enter_to_strip_s": round(long_enter, 3),
              "long_click_s_median": round(statistics.median(long_clicks), 3),
              "long_alpha_to_view_s_median": round(statistics.median(long_alpha), 3),
              "load_average_1min": round(load, 2), "cpus": os.cpu_count()}
    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(result, indent=2))
    print(f"\nbrowser timings: {json.dumps(result)}")
    assert 55 <= tokens <= 75
    # Targets are 3 s and 0.3 s on an idle 2-core CPU; these bounds only catch a page that hangs
    # or runs the model on an alpha change (the measured figures are printed and saved above).
    assert first_inspect < 60 and alpha_s < 5
    # The target is a lens click within 1.2x of a plain one (printed above); this bound only
    # catches a lens that runs the model again on a click.
    assert lens_click_s < 3 * click_s + 2, (plain_clicks, lens_clicks)
    assert 300 <= long_tokens <= 1024 and statistics.median(long_clicks) < 10, (long_tokens, long_clicks)


def test_anchor_edit_is_saved_and_survives_a_reload(server, page):
    url, anchors, _ = server
    page.goto(f"{url}/anchors")
    editor = page.locator('[data-testid="stDataFrame"]').first
    editor.locator('[role="gridcell"]').first.wait_for(state="attached", timeout=240_000)
    page.locator(".obl-align").wait_for()  # the whole page has rendered: no layout shift under the click
    first_term = editor.locator('[role="gridcell"]').nth(1).inner_text()  # nth(0): the row number
    box = editor.locator("canvas").first.bounding_box()
    page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + 35 + 17)  # row 1, "candidates"
    cell_editor = page.locator("textarea").first  # glide's overlay editor for the cell
    cell_editor.fill("Zed | Quentin")
    cell_editor.press("Enter")
    try:
        page.get_by_text("1 unsaved change(s)").wait_for()
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "anchors_failure.png"), full_page=True)
        raise
    page.get_by_role("button", name="Save", exact=True).click()
    page.get_by_text(re.compile(r"^Saved \d+ terms")).wait_for()
    saved = json.loads(anchors.read_text())
    assert saved[first_term] == ["Zed", "Quentin"]
    assert anchors.with_name("anchors.json.bak").exists()

    page.reload()
    editor = page.locator('[data-testid="stDataFrame"]').first
    editor.locator('[role="gridcell"]').first.wait_for(state="attached")
    assert editor.locator('[role="gridcell"]').nth(2).inner_text() == "Zed | Quentin"  # row, term, candidates
    assert page.get_by_text("No unsaved changes.").count() == 1
