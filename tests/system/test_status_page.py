"""The head's status page in a real browser: Debian's headless chromium, driven
by Selenium through /usr/bin/chromedriver, against a live loopback cluster
with simulated GPUs (one of them hot), a small training job and a small
science batch. It checks what the page shows, that it refreshes in place,
that it loads nothing from anywhere else, and saves a screenshot.

The last test starts a LAN-mode head (`cluster up --host`): without the token
the page is a login form and shows no data."""
import base64
import json
import os
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from localcluster import LocalCluster, salvage

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver")
TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=48", "--set", "block_size=32",
        "--set", "warmup_iters=5", "--set", "lr_decay_iters=60", "--set", "eval_iters=3",
        "--set", "log_interval=5", "--set", "eval_interval=20", "--set", "max_iters=60"]


def gpu_spec(name: str, vram: str, cc: str, temperature_c: float, utilization: float, **extra) -> str:
    return json.dumps([{"name": name, "vram": vram, "cc": cc, "temperature_c": temperature_c,
                        "utilization": utilization, **extra}])


@pytest.fixture(scope="module")
def cluster(local_cluster, tmp_path_factory):
    """Three PCs (a cool GPU, a hot one, a CPU-only one), one finished training
    job and one finished science batch."""
    work = tmp_path_factory.mktemp("page")
    local_cluster.specs = {"cool": work / "cool.json", "hot": work / "hot.json"}
    local_cluster.specs["cool"].write_text(gpu_spec("RTX 3060", "12GB", "8.6", 52, 0.35, gflops=900))
    # 91 °C with the card's own thermal slowdown on: hot by either sign.
    local_cluster.specs["hot"].write_text(gpu_spec("GTX 1070", "8GB", "6.1", 91, 0.97, gflops=300,
                                                   throttle=["sw_thermal"]))
    for name, spec in local_cluster.specs.items():
        local_cluster.join(name, f"@{spec}")
    local_cluster.join("office", "")
    for name in ("cool", "hot", "office"):
        local_cluster.wait_state(name, "alive", timeout=120)
    corpus = work / "corpus.txt"  # any text will do; this one ships with every Python
    from pydoc_data.topics import topics
    corpus.write_text("\n".join(topics.values()))
    state = ["--state-dir", str(local_cluster.state_dir)]
    out = salvage("train", "submit", *state, "--data", str(corpus), *TINY).stdout
    local_cluster.job = int(out.strip().splitlines()[-1])
    out = salvage("science", "submit", "noop", "--grid", "x=" + ",".join(map(str, range(24))), "--quorum", "1",
                  *state).stdout
    local_cluster.batch = int(out.strip().splitlines()[-1])

    def finished():
        jobs = json.loads(salvage("train", "list", *state, "--json").stdout)
        job = next(j for j in jobs if j["id"] == local_cluster.job)
        assert job["state"] not in ("failed", "stopped"), job
        batch = json.loads(salvage("science", "status", *state, "--json", str(local_cluster.batch)).stdout)
        return job["state"] == "done" and batch["done"]

    local_cluster.wait_for(finished, 300, "the training job and the science batch to finish")
    return local_cluster


def chromium(profile: Path, extra: tuple[str, ...] = ()):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,1000", *extra):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP violations, if any
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path / "profile")
    yield driver
    driver.quit()


def wait(driver, predicate, timeout: float = 30.0, what: str = "the page"):
    def check(d):
        try:
            return predicate(d)
        except StaleElementReferenceException:  # the fragment was swapped under us: look again
            return False

    return WebDriverWait(driver, timeout, poll_frequency=0.3).until(check, f"timed out waiting for {what}")


def css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def save_screenshot(driver, path: Path) -> Path:
    """The whole page, not only the window (Chrome's DevTools protocol can capture beyond it)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    artifacts = os.environ.get("SALVAGE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)
    return path


def open_page(driver, address: str) -> None:
    driver.get(f"http://{address}/")
    assert css(driver, "main#live"), f"GET / did not serve the status page: {driver.page_source[:300]}"


def test_the_page_shows_hosts_gpus_training_and_science(cluster, browser, tmp_path):
    open_page(browser, cluster.address)
    hosts = {e.get_attribute("data-host"): e for e in css(browser, "article.host")}
    assert {"cool", "hot", "office"} <= set(hosts)
    for name in ("cool", "hot", "office"):
        assert "alive" in hosts[name].find_element(By.CSS_SELECTOR, ".badge").text

    # The hot GPU shows hot (readings come from its agent's exporter, which polls every second).
    hot = wait(browser, lambda d: css(d, 'article[data-host="hot"] .gpu.hot'), 30, "the hot GPU to show hot")[0]
    assert "GTX 1070" in hot.text and "91 °C" in hot.text and "97%" in hot.text
    assert hot.find_element(By.CSS_SELECTOR, ".badge.hot").text == "hot"
    assert "hot" not in css(browser, 'article[data-host="cool"] .gpu')[0].get_attribute("class").split()
    assert "CPU only" in css(browser, 'article[data-host="office"]')[0].text

    # The training job: done, with a loss curve of several points for train and val.
    job = css(browser, f'article.job[data-job="{cluster.job}"]')[0]
    assert "done" in job.find_element(By.CSS_SELECTOR, ".badge").text and "60 / 60 iters" in job.text
    assert "tokens/s" in job.text
    train = job.find_element(By.CSS_SELECTOR, "svg.loss polyline.curve.train").get_attribute("points").split()
    val = job.find_element(By.CSS_SELECTOR, "svg.loss polyline.curve.val").get_attribute("points").split()
    assert len(train) >= 10 and len(val) == 3  # log every 5 of 60 iterations; evaluated at 20, 40, 60
    rendered = job.find_element(By.CSS_SELECTOR, "svg.loss polyline.curve.train").rect
    assert rendered["width"] > 100 and rendered["height"] > 10  # drawn, not only present in the markup

    # The science queue: the batch with its units by state, a rate, and credit per host.
    row = css(browser, f'tr.batch[data-batch="{cluster.batch}"]')[0]
    assert "noop" in row.text and "24 / 24" in row.text and "done" in row.text
    assert row.find_elements(By.CSS_SELECTOR, "svg.stacked rect.part.done")
    credited = {e.get_attribute("data-host") for e in css(browser, "tr.credit-row")}
    assert credited and credited <= {"cool", "hot", "office"}

    # Links to the other views.
    links = {a.text: a.get_attribute("href") for a in css(browser, "header.top nav a")}
    assert links["Prometheus metrics"].endswith("/metrics") and "Ray dashboard" in links
    save_screenshot(browser, tmp_path / "status-page.png")


def test_it_refreshes_in_place_without_reloading(cluster, browser):
    open_page(browser, cluster.address)
    browser.execute_script("window.notReloaded = true")
    cluster.specs["cool"].write_text(gpu_spec("RTX 3060", "12GB", "8.6", 83, 0.6, gflops=900))
    gpu = 'article[data-host="cool"] .gpu'
    wait(browser, lambda d: css(d, gpu)[0].get_attribute("data-temperature") == "83", 40, "the new temperature")
    assert "warm" in css(browser, gpu)[0].get_attribute("class").split()
    assert browser.execute_script("return window.notReloaded") is True
    assert browser.find_element(By.ID, "updated").text.startswith("updated ")


def test_it_loads_nothing_from_elsewhere_and_breaks_no_policy(cluster, browser):
    open_page(browser, cluster.address)
    origin = f"http://{cluster.address}/"
    wait(browser, lambda d: d.execute_script(
        "return performance.getEntriesByType('resource').some(e => e.name.endsWith('/fragment'))"), 30,
        "a refresh")
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(url.startswith(origin) for url in fetched), fetched
    complaints = [e["message"] for e in browser.get_log("browser")
                  if "Content Security Policy" in e["message"] or e["level"] == "SEVERE"]
    assert complaints == []


@pytest.fixture(scope="module")
def lan_head(tmp_path_factory):
    """A head in LAN mode (token on), on loopback so the test reaches nothing else."""
    head = LocalCluster(tmp_path_factory.mktemp("lan"))
    head.up("--host", "127.0.0.2")
    yield head
    head.down()


@pytest.fixture
def lan_browser(tmp_path):
    """A LAN head speaks TLS with its own CA, which a browser does not know: a test
    browser takes it on trust (what an operator does once, or by importing the CA)."""
    driver = chromium(tmp_path / "profile", ("--ignore-certificate-errors",))
    yield driver
    driver.quit()


def test_in_lan_mode_the_page_asks_for_the_token_and_shows_no_data(lan_head, lan_browser):
    browser = lan_browser
    url = f"https://{lan_head.address}/"
    browser.get(url)
    assert css(browser, 'form.login input[name="token"]') and not css(browser, "#hosts")
    assert lan_head.address not in browser.page_source  # not even the head's own status
    head_ca = ssl.create_default_context(cafile=str(lan_head.state_dir / "tls" / "ca.pem"))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{url}fragment", timeout=5, context=head_ca)
    assert err.value.code == 401

    browser.find_element(By.NAME, "token").send_keys("not-the-token")
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait(browser, lambda d: css(d, "form.login .error"), 10, "the wrong token to be refused")
    assert not css(browser, "#hosts")

    token = (lan_head.state_dir / "token").read_text().strip()
    browser.find_element(By.NAME, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait(browser, lambda d: css(d, "#hosts"), 10, "the page after signing in")
    cookies = browser.get_cookies()
    assert cookies and all(c["httpOnly"] for c in cookies)
    browser.execute_script("window.notReloaded = true")
    wait(browser, lambda d: d.execute_script(
        "return performance.getEntriesByType('resource').some(e => e.name.endsWith('/fragment'))"), 30,
        "a refresh with the cookie")
    assert browser.execute_script("return window.notReloaded") is True
    assert browser.find_element(By.ID, "updated").get_attribute("class") != "stale"
