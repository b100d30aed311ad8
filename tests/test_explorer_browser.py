"""The explorer in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by selenium) against `synthvg serve`'s app on real uvicorn over 127.0.0.1.

Opens the gallery, opens an image, toggles a mask, hovers a region, runs a query, and saves
screenshots: to a temporary folder, or to docs/explorer/ with SYNTHVG_UPDATE_SCREENSHOTS=1 (so a
test run leaves the tree as it was). Skips (saying what is missing) without chromium, chromedriver
or selenium; `.ci/run` installs them.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from explorer_dataset import XSS_LABEL, XSS_PREDICATE, A, build_explorer_dataset
from helpers import REPO, demo_config

from synthvg.explorer import ExplorerConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SHOTS = (
    REPO / "docs" / "explorer"
    if os.environ.get("SYNTHVG_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="synthvg-shots-"))
)

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')"
)
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "the browser test needs Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


class Server:
    """`create_app` on uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, root: Path):
        import uvicorn

        from synthvg.explorer.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        app = create_app(ExplorerConfig(root=str(root), port=self.port, page_size=12))
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    from synthvg.pipeline import run_build

    cfg = demo_config(tmp_path_factory.mktemp("explorer-demo") / "root", limit=6, shard_size=3)
    run_build(cfg)
    server = Server(Path(cfg.out))
    yield server
    server.stop()


def no_alert(driver) -> None:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    pytest.fail(f"a script ran: alert({alert.text!r})")


def wait(driver, condition, seconds: float = 30):
    return WebDriverWait(driver, seconds).until(condition)


def test_gallery_image_mask_and_query_in_chromium(browser, demo_server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    b = browser
    b.get(demo_server.url + "/")
    assert "of 6 images match" in b.find_element(By.ID, "counts").text
    cards = b.find_elements(By.CSS_SELECTOR, "a.card")
    assert len(cards) == 6
    # every thumbnail decoded (naturalWidth > 0): the image route served real JPEGs
    wait(
        b,
        lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll('a.card img')).every(i => i.complete && i.naturalWidth > 0)"
        ),
    )
    b.save_screenshot(str(SHOTS / "gallery.png"))

    # filter by a category, then open the image with the most relations (from the SQL page)
    b.find_element(By.CSS_SELECTOR, "select[name=category] option[value=spatial]").click()
    b.find_element(By.ID, "apply").click()
    wait(b, EC.url_contains("category=spatial"))
    b.get(demo_server.url + "/sql")
    box = b.find_element(By.ID, "q")
    box.clear()
    box.send_keys(
        "SELECT image_id, count(*) AS relations FROM relations GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5"
    )
    b.find_element(By.ID, "run").click()
    table = wait(b, EC.presence_of_element_located((By.ID, "results")))
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert 1 <= len(rows) <= 5 and f"{len(rows)} row(s)" in b.find_element(By.ID, "sql-counts").text
    assert (
        b.find_element(By.ID, "csv")
        .get_attribute("href")
        .endswith(
            "/sql.csv?q=SELECT+image_id%2C+count%28%2A%29+AS+relations+FROM+relations+GROUP+BY+1+ORDER+BY+2+DESC%2C+1+LIMIT+5"
        )
    )
    b.save_screenshot(str(SHOTS / "sql.png"))
    table.find_element(By.CSS_SELECTOR, "tbody tr td a").click()

    # the image page: photo loaded, one mask per region, toggling hides it
    wait(b, EC.presence_of_element_located((By.ID, "overlay")))
    wait(
        b,
        lambda d: d.execute_script(
            "const i = document.getElementById('photo'); return i.complete && i.naturalWidth > 0"
        ),
    )
    regions = b.find_elements(By.CSS_SELECTOR, "#overlay g.region")
    assert len(regions) >= 2
    first = regions[0].get_attribute("data-rid")
    mask = b.find_element(By.ID, f"region-{first}")
    assert mask.value_of_css_property("display") != "none"
    b.save_screenshot(str(SHOTS / "image.png"))
    b.find_element(By.CSS_SELECTOR, f'input[data-toggle-rid="{first}"]').click()
    assert mask.value_of_css_property("display") == "none"
    b.find_element(By.CSS_SELECTOR, f'input[data-toggle-rid="{first}"]').click()
    assert mask.value_of_css_property("display") != "none"
    b.find_element(By.ID, "masks-none").click()
    assert all(g.value_of_css_property("display") == "none" for g in regions)
    b.find_element(By.ID, "masks-all").click()
    assert all(g.value_of_css_property("display") != "none" for g in regions)

    # hovering a region's row lights up the region and every relation it takes part in
    rel = b.find_element(By.CSS_SELECTOR, "li.rel")
    subject = rel.get_attribute("data-s")
    row = b.find_element(By.CSS_SELECTOR, f'tr.region-row[data-rid="{subject}"]')
    ActionChains(b).move_to_element(row).perform()
    wait(b, lambda d: "hl" in rel.get_attribute("class").split())
    assert "hl" in b.find_element(By.ID, f"region-{subject}").get_attribute("class")
    b.execute_script("window.scrollTo(0, 0)")
    ActionChains(b).move_to_element(row).perform()
    b.save_screenshot(str(SHOTS / "image-hover.png"))

    b.get(demo_server.url + "/dataset")
    assert b.find_element(By.ID, "table1").is_displayed()
    b.save_screenshot(str(SHOTS / "dataset.png"))
    no_alert(b)


def test_injected_markup_stays_text_in_chromium(browser, tmp_path):
    """The predicate <script>alert(1)</script> and the label "><img src=x onerror=alert(1)>
    show as text; no script runs (an alert would be open)."""
    root = tmp_path / "root"
    build_explorer_dataset(root)
    server = Server(root)
    try:
        browser.get(f"{server.url}/image/{A}")
        wait(browser, EC.presence_of_element_located((By.ID, "overlay")))
        time.sleep(0.5)  # time for an injected onerror to fire, were there one
        no_alert(browser)
        page = browser.find_element(By.TAG_NAME, "body").text
        assert XSS_PREDICATE in page and XSS_LABEL in page
        assert not browser.find_elements(By.CSS_SELECTOR, "img[src=x], main script")
        browser.get(f"{server.url}/?predicate={XSS_PREDICATE}")
        no_alert(browser)
        assert "1 of 3 images match" in browser.find_element(By.ID, "counts").text
    finally:
        server.stop()
