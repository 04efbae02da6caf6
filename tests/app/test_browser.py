"""The dashboard in a real browser: `moesim dashboard` serves it, Playwright drives Debian's chromium (never a
downloaded browser), a slider moves the routing skew, and the step time shown grows.

The README's screenshot comes from this test: MOESIM_WRITE_SCREENSHOT=1 saves it as docs/dashboard-what-if.png
(otherwise it goes to the test's temporary directory, so that a test run leaves the checkout as it was)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "docs" / "dashboard-what-if.png"
START_TIMEOUT_S = 60.0
RENDER_TIMEOUT_MS = 60_000
SKEW_STEPS = 10  # ArrowRight presses: Zipf s 0.5 -> 1.0 in steps of 0.05

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=(
    "no chromium at /usr/bin/chromium: `make test` installs Debian's (apt-get install chromium); the test "
    "never downloads a browser"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moesim_command() -> list[str]:
    script = Path(sys.executable).with_name("moesim")  # the console script of this environment
    return [str(script)] if script.is_file() else [sys.executable, "-m", "moesim.cli"]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen([*moesim_command(), "dashboard", "--port", str(port)], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.read() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moesim dashboard did not start: {(tmp_path / 'dashboard.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()  # the launcher exec'd into the server: this pid is the server
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def step_time_s(page) -> float:
    return float(page.locator('[data-testid="stMetricValue"]').first.inner_text().removesuffix(" s"))


def wait_idle(page) -> None:
    """The script has finished and every chart is drawn (the metric is updated before the charts are)."""
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=RENDER_TIMEOUT_MS)
    page.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=RENDER_TIMEOUT_MS)
    page.locator('[data-testid="stSkeleton"]').first.wait_for(state="detached", timeout=RENDER_TIMEOUT_MS)


def test_slider_moves_step_time(server, tmp_path):
    expect = playwright.expect
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            # tall: Streamlit scrolls an inner container, so a full-page screenshot shows only the viewport
            page = browser.new_page(viewport={"width": 1400, "height": 1350})
            page.goto(server)
            metric = page.locator('[data-testid="stMetricValue"]').first
            metric.wait_for(timeout=RENDER_TIMEOUT_MS)
            wait_idle(page)
            before = step_time_s(page)
            slider = page.locator('[data-testid="stSlider"]').filter(has_text="Zipf").get_by_role("slider")
            slider.focus()
            for _ in range(SKEW_STEPS):
                slider.press("ArrowRight")
            expect(slider).to_have_attribute("aria-valuetext", "1.00", timeout=RENDER_TIMEOUT_MS)
            expect(metric).not_to_have_text(f"{before:.4f} s", timeout=RENDER_TIMEOUT_MS)
            wait_idle(page)
            after = step_time_s(page)
            assert after > before * 1.05  # Zipf 1.0 loads the hottest experts' GPUs more than 0.5
            assert not page.locator('[data-testid="stException"]').count()
            shot = SCREENSHOT if os.environ.get("MOESIM_WRITE_SCREENSHOT") == "1" else tmp_path / SCREENSHOT.name
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 30_000  # the app, not Streamlit's grey loading skeleton
        finally:
            browser.close()
