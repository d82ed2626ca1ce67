"""End to end in a real browser: `streamlit run app/main.py` on the embedded model, driven by
Debian's chromium through playwright. Prints the two speeds the issue sets targets for:
Enter -> token strip for a ~64-token prompt (model loaded), and alpha change -> updated view.
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
        yield url, anchors
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


_WEBSOCKETS: list = []


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        pg = browser.new_page(viewport={"width": 1500, "height": 1100})
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


def test_inspect_in_the_browser(server, page):
    url, _ = server
    page.goto(url)
    page.get_by_text("MiB of weights").wait_for(timeout=240_000)  # the embedded model is loaded

    _submit(page, HP)
    # Select the last position explicitly (it is also the default) and read the baseline column.
    n = page.locator(".obl-strip .tok").count()
    position = _slider(page, "Position")
    position.focus()
    position.press("End")
    page.locator(f'.obl-strip .tok.sel[data-pos="{n - 1}"]').wait_for()
    baseline = page.locator('[data-testid="stDataFrame"]').first
    cells = baseline.locator('[role="gridcell"]')
    cells.first.wait_for(state="attached")
    top = cells.all_inner_texts()
    assert top[0] == "' Herm'", f"baseline top-k after {HP!r}: {top}"
    assert float(top[1]) > 0.5
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

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _submit(page, HP)
    # Streamlit scrolls inside its own container: a tall viewport shows the whole page.
    page.set_viewport_size({"width": 1500, "height": 2600})
    page.wait_for_timeout(1500)  # let the Plotly chart finish drawing
    page.screenshot(path=str(ARTIFACTS / "inspect.png"))
    page.set_viewport_size({"width": 1500, "height": 1100})
    load = os.getloadavg()[0]
    result = {"prompt_tokens": tokens, "enter_to_strip_s": round(first_inspect, 3),
              "alpha_to_view_s_median": round(alpha_s, 3), "alpha_to_view_s": [round(t, 3) for t in times],
              "alpha_request_to_view_s_median": round(statistics.median(after_send), 3) if after_send else None,
              "load_average_1min": round(load, 2), "cpus": os.cpu_count()}
    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(result, indent=2))
    print(f"\nbrowser timings: {json.dumps(result)}")
    assert 55 <= tokens <= 75
    # Targets are 3 s and 0.3 s on an idle 2-core CPU; these bounds only catch a page that hangs
    # or runs the model on an alpha change (the measured figures are printed and saved above).
    assert first_inspect < 60 and alpha_s < 5


def test_anchor_edit_is_saved_and_survives_a_reload(server, page):
    url, anchors = server
    page.goto(f"{url}/anchors")
    editor = page.locator('[data-testid="stDataFrame"]').first
    editor.locator('[role="gridcell"]').first.wait_for(state="attached", timeout=240_000)
    page.locator(".obl-align").wait_for()  # the whole page has rendered: no layout shift under the click
    first_term = editor.locator('[role="gridcell"]').first.inner_text()
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
    assert editor.locator('[role="gridcell"]').nth(1).inner_text() == "Zed | Quentin"
    assert page.get_by_text("No unsaved changes.").count() == 1
