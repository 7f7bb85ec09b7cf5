"""The web app (`kuosan serve`): its request validation, its queue, and the page driven in headless
Chromium as a user drives it (`make browser` installs Chromium and its driver; without them the
browser test is skipped, saying so). The screenshot lands in $KUOSAN_ARTEFACTS (default: the test's
temporary folder)."""

import io
import math
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import fails_cleanly, kuosan
from kuosan.config import ConfigError
from train_helpers import TINY_DIGITS

gradio = pytest.importorskip("gradio", reason="the web app needs gradio: pip install 'kuosan[web]'")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grid_size(n: int, h: int = 8, scale: int = 16) -> tuple[int, int]:
    """(width, height) in pixels of the app's grid of n h x h images (kuosan.imaging.image_grid)."""
    nrow = math.ceil(math.sqrt(n))
    return (nrow * (h + 1) + 1) * scale, (math.ceil(n / nrow) * (h + 1) + 1) * scale


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    kuosan("train", "--preset", "digits", "--steps", 2, "--out", root / "digits", "--no-progress", *TINY_DIGITS)
    kuosan("train", "--preset", "toy2d", "--steps", 2, "--out", root / "toy", "--no-progress")
    return root


@pytest.fixture(scope="module")
def app_url(runs, tmp_path_factory):
    from kuosan import web

    out = tmp_path_factory.mktemp("web")
    page, url = web.serve([str(runs / "digits"), str(runs / "toy")], port=_free_port(), out=out, block=False)
    yield url, out
    page.close()


def _arguments(**changes) -> list:
    """A request's arguments, in the order of Server.generate and of the /generate endpoint."""
    args = dict(
        run="digits", sampler="ddim", grid="(the run's)", steps=3, eta=None, seed=0, n=4, class_label="all",
        prompt="", negative="", guidance=None, task="txt2img", image=None, strength=0.6,
    )  # fmt: skip
    args.update(changes)
    return list(args.values())


def _request(server, **changes):
    return server.generate(*_arguments(**changes))


def _predict(client, **changes):
    """The same request through the API (gradio_client), eta 0 as a number field would send it."""
    return client.predict(*_arguments(**{"eta": 0, **changes}), api_name="/generate")


def test_requests_are_validated_as_the_cli_validates(runs, tmp_path):
    from kuosan.web import Server

    server = Server([str(runs / "digits"), str(runs / "toy")], tmp_path)
    for changes, message in (
        ({"steps": 0}, "steps must be at least 1"),
        ({"steps": 2.5}, "whole number"),
        ({"steps": 1001}, "at most 1000"),
        ({"steps": float("inf")}, "whole number"),
        ({"seed": 2**64}, "at most"),
        ({"seed": True}, "whole number"),
        ({"n": 0}, "batch size must be at least 1"),
        ({"sampler": "nope"}, "unknown sampler 'nope'"),
        ({"run": "other"}, "unknown run"),
        ({"prompt": "a cat"}, "not text-conditional"),
        ({"task": "inpaint"}, "needs a text-conditional run"),
        ({"sampler": "euler", "eta": 1.0}, "takes no eta"),
        ({"class_label": "3"}, "not class-conditional"),
    ):
        with pytest.raises(ConfigError, match=message):
            _request(server, **changes)
    out = _request(server, n=5, steps=4)
    assert out["grid"].size == _grid_size(5) and len(out["frames"]) == 5  # 4 steps and the sample
    big = [_request(server, seed=seed)["grid"].tobytes() for seed in ("12345678901234567", 12345678901234568)]
    assert big[0] != big[1]  # two seeds: exact, not rounded through a float (both would be ...568)
    with pytest.raises(ConfigError, match="at most 9223372036854775807, got a number of about 400 digits"):
        _request(server, seed=10**400)
    stochastic = [_request(server, sampler="euler-ancestral", eta=eta, seed=1)["grid"].tobytes() for eta in (None, 0)]
    assert stochastic[0] != stochastic[1]  # blank: the sampler's own eta (1), not 0
    assert Path(out["file"]).parent == tmp_path / "images" and Path(out["file"]).is_file()
    toy = _request(server, run="toy", n=50)
    assert toy["grid"].size == (512, 512)  # 2-D points: a scatter plot


def test_the_drawn_strokes_are_the_mask_at_the_models_size():
    """The image editor's value (an uploaded background, RGBA stroke layers) -> the image in [-1, 1]
    and the mask (1 = repaint) where the strokes' alpha is, resized to the model's size."""
    from kuosan.web import _editor_images

    background = np.zeros((64, 48, 3), np.uint8)
    background[..., 0] = 255
    strokes = np.zeros((64, 48, 4), np.uint8)
    strokes[:32, :24] = (255, 0, 255, 150)  # the top-left quarter, translucent
    image, mask = _editor_images({"background": background, "layers": [strokes]}, (16, 12), "inpaint")
    assert image.shape == (1, 3, 16, 12) and mask.shape == (1, 1, 16, 12)
    torch.testing.assert_close(image[0, 0], torch.ones(16, 12))
    torch.testing.assert_close(image[0, 1], -torch.ones(16, 12))
    expected = torch.zeros(16, 12)
    expected[:8, :6] = 1
    assert torch.equal(mask[0, 0], expected)
    assert _editor_images({"background": background, "layers": [strokes]}, (16, 12), "img2img")[1] is None
    with pytest.raises(ConfigError, match="the mask is 10x10 but the image 48x64"):
        _editor_images({"background": background, "layers": [np.zeros((10, 10, 4), np.uint8)]}, (16, 12), "inpaint")


def test_a_missing_folder_or_a_bad_port_is_refused(tmp_path):
    from kuosan.web import Server

    with pytest.raises(ConfigError, match="run directory not found"):
        Server([str(tmp_path / "nothing")], tmp_path / "out")
    fails_cleanly(kuosan("serve", tmp_path / "nothing", "--out", tmp_path / "out", check=False), "not found")
    fails_cleanly(kuosan("serve", tmp_path, "--port", 0, check=False), "--port")


def test_two_users_at_once_are_queued_and_both_answered(app_url, tmp_path, monkeypatch):
    """Two API clients at the same time: both get their own samples, one after the other (the queue
    runs one request at a time: never two samplers at once)."""
    from gradio_client import Client

    from kuosan.web import Server

    url, _ = app_url
    results, errors, downloads = {}, [], tmp_path
    running, most = [0], [0]
    generate = Server.generate

    def counted(self, *args, **kwargs):  # outside the server's own lock: the queue alone keeps them apart
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            time.sleep(0.5)  # long enough for the other request to arrive meanwhile
            return generate(self, *args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(Server, "generate", counted)

    def ask(seed):
        try:
            client = Client(url, verbose=False, download_files=str(downloads))
            results[seed] = _predict(client, seed=seed)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and set(results) == {1, 2}
    assert most[0] == 1
    a, b = (Image.open(results[s][0]) for s in (1, 2))
    assert a.size == b.size == _grid_size(4) and a.tobytes() != b.tobytes()  # two seeds, two grids


def test_an_unknown_sampler_through_the_api_is_an_error_and_the_server_keeps_serving(app_url, tmp_path):
    from gradio_client import Client

    url, _ = app_url
    client = Client(url, verbose=False, download_files=str(tmp_path))
    with pytest.raises(Exception, match="unknown sampler 'nope'"):
        _predict(client, sampler="nope")
    with pytest.raises(Exception, match="steps must be a whole number, got 2.5"):  # refused, not rounded to 2
        _predict(client, sampler="euler", steps=2.5)
    ok = _predict(client, sampler="euler")
    assert Image.open(ok[0]).size == _grid_size(4)


# --- the page in a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium and ChromeDriver here (`make browser` installs Debian's chromium, chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (kuosan[test])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,1600",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(predicate, timeout=90.0, what="the page"):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _set(driver, elem_id: str, value, *, choose=False) -> None:
    """Type ``value`` into the component ``elem_id`` (a number, a textbox or a dropdown)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for _ in range(5):
        box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(str(value))
        if not choose:
            box.send_keys(Keys.TAB)
            return
        # the list re-renders as it filters what was typed: click the option as it stands then, and
        # read the choice back (a click as the list moves can land on its neighbour, dpmpp-2m-sde)
        _wait(lambda: _click_option(driver, value), what=f"the option {value}")
        time.sleep(0.5)
        if box.get_attribute("value") == str(value):
            return
    raise AssertionError(f"could not choose {value} in #{elem_id}")


def _click_option(driver, value) -> bool:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        driver.find_element(By.CSS_SELECTOR, f'li[role="option"][aria-label="{value}"]').click()
        return True
    except (StaleElementReferenceException, NoSuchElementException):
        return False


def _result_src(driver) -> str | None:
    from selenium.webdriver.common.by import By

    imgs = driver.find_elements(By.CSS_SELECTOR, "#result img")
    src = imgs[0].get_attribute("src") if imgs else None
    return src if src and src.startswith("http") else None


def test_the_page_generates_and_shows_errors_in_a_real_browser(browser, app_url, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    from kuosan.web import Server

    asked, generate = [], Server.generate

    def spy(self, *args, **kwargs):  # what the page sends
        asked.append(args)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(Server, "generate", spy)
    url, out = app_url
    before = set((out / "images").iterdir())
    browser.get(url)
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#generate"), what="the Generate button")
    _set(browser, "run", "digits", choose=True)
    _set(browser, "sampler", "dpmpp-2m", choose=True)
    _set(browser, "steps", 4)
    _set(browser, "batch", 9)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    src = _wait(lambda: _result_src(browser), what="the sample grid")
    with urllib.request.urlopen(src) as r:
        grid = Image.open(io.BytesIO(r.read()))
        grid.load()
    assert grid.size == _grid_size(9)  # 9 samples: a 3 x 3 grid of 8x8 digits, enlarged 16 times
    assert asked[0][:4] == ("digits", "dpmpp-2m", "(the run's)", 4) and asked[0][4] in (None, "")  # eta: blank
    _wait(lambda: "9 samples from digits" in browser.find_element(By.CSS_SELECTOR, "#status").text, what="the summary")
    frames = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#trajectory img"), what="the trajectory")
    assert len(frames) >= 2
    artefacts = Path(os.environ.get("KUOSAN_ARTEFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(artefacts / "web-app.png"))

    _set(browser, "steps", 0)  # a bad input: an error in the page
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    _wait(lambda: "steps must be at least 1" in browser.find_element(By.TAG_NAME, "body").text, what="the error")
    browser.save_screenshot(str(artefacts / "web-app-error.png"))

    _set(browser, "steps", 3)  # the server kept serving
    _set(browser, "batch", 4)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    _wait(lambda: "4 samples from digits" in browser.find_element(By.CSS_SELECTOR, "#status").text, what="a new grid")
    assert len(set((out / "images").iterdir()) - before) == 2  # the two grids
    written = [p.relative_to(out) for p in Path(out).rglob("*") if p.is_file()]
    assert {p.parts[0] for p in written} == {"images", "cache"}  # gradio's copies of what it served: in cache/


def test_kuosan_serve_as_a_user_starts_it_and_stops_it(runs, tmp_path):
    """`kuosan serve RUN` in its own process: one JSON line with the loopback URL, the page served
    there, a request answered, nothing written to the temporary folder (gradio's default scratch
    folder) but all under --out, and Ctrl-C (SIGINT) ends it."""
    import json
    import signal
    import subprocess
    import sys

    from gradio_client import Client

    port, out, scratch = _free_port(), tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kuosan", "serve", str(runs / "digits"), "--port", str(port), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    try:
        line = json.loads(proc.stdout.readline())
        assert line["url"].startswith(f"http://127.0.0.1:{port}")
        with urllib.request.urlopen(line["url"]) as r:
            assert r.status == 200 and "kuosan" in r.read().decode()
        client = Client(line["url"], verbose=False, download_files=False)
        answer = _predict(client)
        assert Path(answer[0]["path"]).is_relative_to(out / "cache")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode in (0, 130), proc.stderr.read()
    assert list(scratch.iterdir()) == []
    assert len(list((out / "images").iterdir())) == 1
