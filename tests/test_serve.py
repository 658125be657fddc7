"""Scale-out on Ray: requests batched across clients give each image exactly what direct generation
gives; bad requests are 400; Ray Data writes the same files and resumes; nothing is left running."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastervar.cli import main
from fastervar.export.bundle import export_bundle
from fastervar.models.loading import shipped_model
from fastervar.models.sampling import SamplingSettings
from fastervar.profiles import resolve
from fastervar.runtime.pipeline import Pipeline
from fastervar.serve import RequestError, RequestSchema, free_port, image_name, parse_request, png_bytes

from .test_cli import assert_bad_input


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_bundle(shipped_model("fashion-tiny"), resolve("fashion-tiny-calibrated"), tmp_path_factory.mktemp("b") / "bundle",
                         SamplingSettings(), max_batch=8, progress=False)


def test_generate_items_mixes_requests_without_changing_any_image(bundle):
    pipe = Pipeline.from_bundle(bundle)
    rng = np.random.default_rng(0)
    items = [(int(rng.integers(10)), int(rng.integers(3)), int(rng.integers(50))) for _ in range(13)]
    together = pipe.generate_items(items)                  # two chunks of mixed seeds, shuffled indices
    for j, (c, s, i) in enumerate(items):
        alone = pipe.generate([c], seed=s, first_index=i)
        for k, t in enumerate(together.tokens):
            assert np.array_equal(t[j], alone.tokens[k][0]), f"item {j} step {k}"


def test_parse_request_accepts_one_or_many_and_refuses_the_rest():
    classes = RequestSchema(num_classes=10)
    assert parse_request(b'{"class": 3, "seed": 1, "index": 5}', classes, 64) == ([(3, 1, 5, None)], False)
    assert parse_request(b'{"class": 3, "format": "json"}', classes, 64) == ([(3, 0, 0, None)], True)
    assert parse_request(b'[{"class": 1}, {"class": 2, "index": 1}]', classes, 64) == \
        ([(1, 0, 0, None), (2, 0, 1, None)], True)
    for body, message in ((b'{"class": 99}', "class index 99 is out of range"), (b"nope", "not JSON"),
                          (b'{"seed": 1}', "'class' is missing"), (b'{"class": -1}', "integer >= 0"),
                          (b'{"class": true}', "integer >= 0"), (b"[]", "non-empty list"),
                          (b'{"class": 1, "colour": 2}', "unknown field 'colour'"),
                          (b'{"class": 1, "format": "gif"}', "png or json"),
                          (b'{"prompt": "a cat"}', "unknown field 'prompt'"),
                          (json.dumps([{"class": 1}] * 65).encode(), "at most 64")):
        with pytest.raises(RequestError, match=message):
            parse_request(body, classes, 64)


def test_parse_request_for_a_text_bundle_takes_prompts_and_aspects():
    text = RequestSchema(aspects=("1:1", "1:2"), max_tokens=6, count_tokens=lambda p: len(p.split()) + 1)
    assert parse_request(b'{"prompt": "a red fox", "seed": 2}', text, 64) == ([("a red fox", 2, 0, "1:1")], False)
    assert parse_request(b'[{"prompt": "dog", "aspect": "1:2", "index": 3}]', text, 64) == \
        ([("dog", 0, 3, "1:2")], True)
    for body, message in ((b'{"prompt": ""}', "'prompt' must be non-empty text"),
                          (b'{"prompt": "   "}', "'prompt' must be non-empty text"),
                          (b'{"prompt": 3}', "'prompt' must be non-empty text"),
                          (b'{"seed": 1}', "'prompt' must be non-empty text"),
                          (b'{"prompt": "one two three four five six"}', "too long .* 7 tokens"),
                          (json.dumps({"prompt": "x" * 2001}).encode(), "at most 2000 characters"),
                          (b'{"prompt": "dog", "aspect": "2:1"}', "aspect '2:1' is not in this bundle"),
                          (b'{"class": 3}', "unknown field 'class'")):
        with pytest.raises(RequestError, match=message):
            parse_request(body, text, 64)


def test_without_ray_serve_names_the_extra(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert_bad_input(CliRunner().invoke(main, ["serve", str(bundle)]), "pip install 'fastervar[serve]'")
    assert_bad_input(CliRunner().invoke(main, ["serve", str(bundle), "--replicas", "0"]), "--replicas must be")


@pytest.mark.parametrize("missing", ["ray", "ray.data", "pandas"])
def test_without_ray_data_generate_batch_names_the_extra_before_any_work(bundle, tmp_path, monkeypatch, missing):
    """`fastervar[serve]` alone has Ray but not Ray Data's pandas: the check imports what the
    command imports, not just `ray`."""
    for name in [m for m in sys.modules if m == "ray.data" or m.startswith("ray.data.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)
    prompts = tmp_path / "p.txt"
    prompts.write_text("1\n2\n")
    r = CliRunner().invoke(main, ["generate-batch", str(bundle), "--prompts", str(prompts), "--out",
                                  str(tmp_path / "o")])
    assert_bad_input(r, "this needs Ray Data: pip install 'fastervar[batch]'")
    assert not (tmp_path / "o").exists()


def test_gpu_providers_reserve_a_gpu_per_worker():
    from fastervar.serve import worker_resources
    assert worker_resources("cpu") == {"num_cpus": 1}
    assert worker_resources("cuda") == worker_resources("tensorrt") == {"num_cpus": 1, "num_gpus": 1}


class _Request:
    """The parts of a Starlette request `read_body` reads."""

    def __init__(self, chunks: list[bytes], declared: int | None):
        self.chunks, self.read = chunks, 0
        self.headers = {} if declared is None else {"content-length": str(declared)}

    async def stream(self):
        for chunk in self.chunks:
            self.read += 1
            yield chunk


def test_request_bodies_are_capped_before_they_are_buffered():
    import asyncio

    from fastervar.serve import BodyTooLarge, read_body
    ok = _Request([b'{"class": 1}'], 12)
    assert asyncio.run(read_body(ok, 64)) == b'{"class": 1}'
    declared = _Request([b"x" * 100] * 1000, 100_000)
    with pytest.raises(BodyTooLarge, match="100000 bytes; at most 64"):
        asyncio.run(read_body(declared, 64))
    assert declared.read == 0                                   # refused on its Content-Length alone
    chunked = _Request([b"x" * 40] * 1000, None)                 # no length given: counted as it streams
    with pytest.raises(BodyTooLarge, match="over 64 bytes"):
        asyncio.run(read_body(chunked, 64))
    assert chunked.read == 2


def test_serve_config_arguments_are_checked(bundle):
    from fastervar.errors import FastervarError
    from fastervar.serve import app
    with pytest.raises(FastervarError, match="bad Serve application arguments"):
        app({"bundle": str(bundle), "colour": "red"})



def _post(url: str, payload) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _ours(root: str) -> list[int]:
    """Processes whose command line names our Ray temp dir."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if root in cmd and int(pid) != os.getpid():
            pids.append(int(pid))
    return pids


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory) -> Path:
    """A tiny Infinity bundle at two aspects that takes prompts as text (a tiny T5 inside)."""
    from .test_t5 import tiny_t5_folder
    d = tmp_path_factory.mktemp("tb")
    t5 = tiny_t5_folder(d / "t5")
    r = CliRunner().invoke(main, ["export", "--model", "infinity-tiny", "--random-weights", "--pn", "0.06M",
                                  "--aspect", "1:1", "--aspect", "1:2", "--profile", "infinity-paper-split",
                                  "--text-encoder", str(t5), "--max-batch", "8", "--out", str(d / "bundle")])
    assert r.exit_code == 0, r.output
    return d / "bundle"


PROMPTS = ["a red fox", "the cat", "a red fox jumps over the lazy dog", "dog"]


@pytest.fixture
def ray_root(monkeypatch, request):
    needs = request.node.get_closest_marker("needs")
    for module in needs.args if needs else ("ray",):
        pytest.importorskip(module, reason=f"this Ray test needs {module}: pip install 'fastervar[serve,batch]'")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    root = tempfile.mkdtemp(prefix="fvray", dir="/tmp")     # Ray's socket paths must stay short
    from fastervar.serve import start_ray
    start_ray(root)
    yield root
    from fastervar.serve import shutdown
    shutdown()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.needs("ray.serve", "starlette")
def test_serve_batches_concurrent_requests_and_answers_like_direct_generation(bundle, ray_root):
    from fastervar.serve import ServeOptions, serve_bundle, shutdown

    port = free_port()
    handle = serve_bundle(ServeOptions(str(bundle), batch_wait_ms=50), "127.0.0.1", port, 1, blocking=False)
    url = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(url + "/healthz", timeout=30) as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with urllib.request.urlopen(url + "/info", timeout=30) as r:
        assert json.loads(r.read())["profile"] == "fashion-tiny-calibrated"
    items = [(i % 10, i // 10, i) for i in range(32)]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda it: _post(url + "/generate", {"class": it[0], "seed": it[1], "index": it[2],
                                                                     "format": "json"}), items))
    direct = Pipeline.from_bundle(bundle).generate_items(items)
    for j, (status, body) in enumerate(answers):
        assert status == 200, body
        got = json.loads(body)["images"][0]
        assert all(np.array_equal(np.asarray(got["tokens"][k]), direct.tokens[k][j]) for k in range(len(direct.tokens)))
    status, body = _post(url + "/generate", {"class": 3, "seed": 0, "index": 3})
    assert status == 200 and body == png_bytes(direct.images[3])
    via_handle = handle.generate.remote([(5, 0, 5, None), (7, 2, 27, None)]).result(timeout_s=60)
    assert np.array_equal(via_handle[0][0], direct.images[5]) and np.array_equal(via_handle[1][0], direct.images[27])
    with urllib.request.urlopen(url + "/stats", timeout=30) as r:
        assert max(json.loads(r.read())["batches"]) > 1      # concurrent requests shared a batch
    status, body = _post(url + "/generate", {"class": 99})
    assert status == 400 and "class index 99 is out of range" in json.loads(body)["error"]
    status, _ = _post(url + "/generate", {"class": 1})        # the replica still serves after a bad request
    assert status == 200
    status, body = _post(url + "/generate", {"class": 1, "pad": "x" * 70_000})
    assert status == 413 and "at most 65536" in json.loads(body)["error"]
    status, _ = _post(url + "/generate", {"class": 2})
    assert status == 200
    shutdown()
    assert not _ours(ray_root), "Ray processes were left running"


@pytest.mark.slow
@pytest.mark.needs("ray.serve", "starlette")
def test_serve_takes_prompts_and_answers_what_fastervar_run_draws(text_bundle, ray_root, tmp_path):
    """16 concurrent prompt requests at two aspects: each PNG is `fastervar run`'s for the same
    (prompt, seed, aspect); an empty or over-long prompt and an unknown aspect are 400s and the
    replica keeps serving."""
    from fastervar.serve import ServeOptions, serve_bundle, shutdown

    port = free_port()
    serve_bundle(ServeOptions(str(text_bundle), batch_wait_ms=50), "127.0.0.1", port, 1, blocking=False)
    url = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(url + "/info", timeout=30) as r:
        accepts = json.loads(r.read())["accepts"]
    assert accepts["aspects"] == ["1:1", "1:2"] and accepts["prompt"]["max_tokens"] == 512
    items = [(PROMPTS[i % 4], i // 8, 0, ("1:1", "1:2")[i % 2]) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda it: _post(url + "/generate", {"prompt": it[0], "seed": it[1],
                                                                     "aspect": it[3]}), items))
    for (prompt, seed, _, aspect), (status, body) in zip(items, answers):
        assert status == 200, body
        out = tmp_path / f"{prompt}-{seed}-{aspect}".replace(" ", "_").replace(":", "x")
        if not out.exists():
            r = CliRunner().invoke(main, ["run", str(text_bundle), "--prompt", prompt, "--seed", str(seed),
                                          "--aspect", aspect, "--out", str(out)])
            assert r.exit_code == 0, r.output
        assert body == (out / "0000.png").read_bytes(), (prompt, seed, aspect)
    for bad, message in (({"prompt": ""}, "non-empty text"), ({"prompt": "dog " * 600}, "the prompt is too long"),
                         ({"prompt": "dog", "aspect": "2:1"}, "aspect '2:1' is not in this bundle")):
        status, body = _post(url + "/generate", bad)
        assert status == 400 and message in json.loads(body)["error"], body
        status, _ = _post(url + "/generate", {"prompt": "dog"})
        assert status == 200
    shutdown()
    assert not _ours(ray_root), "Ray processes were left running"


@pytest.mark.slow
@pytest.mark.needs("ray.data")
def test_generate_batch_on_ray_data_writes_direct_images_and_resumes(bundle, ray_root, tmp_path):
    from fastervar.serve import generate_batch

    classes = [(7 * i) % 10 for i in range(256)]
    written, skipped = generate_batch(str(bundle), classes, 4, tmp_path / "out", concurrency=2, progress=False)
    assert (written, skipped) == (256, 0)
    direct = Pipeline.from_bundle(bundle).generate(classes, seed=4)
    for i in range(256):
        assert (tmp_path / "out" / image_name(i)).read_bytes() == png_bytes(direct.images[i]), f"image {i}"
    (tmp_path / "out" / image_name(17)).unlink()
    assert generate_batch(str(bundle), classes, 4, tmp_path / "out", progress=False) == (1, 255)
    assert generate_batch(str(bundle), classes, 4, tmp_path / "out", progress=False) == (0, 256)


def test_the_page_is_one_self_contained_file():
    """No framework and nothing fetched from elsewhere: the page works on a machine with no
    network, and only talks to the server that served it."""
    from fastervar.serve import page
    html = page().decode()
    assert html.startswith("<!doctype html>")
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)""", html), "the page loads an asset"
    assert not re.search(r"https?://|//[a-z]", html.replace("http://www.w3.org", "")), "the page names another host"
    assert "fetch(\"/info\")" in html and "fetch(\"/generate\"" in html


def _browser(tmp_path):
    """Headless Debian Chromium through its own chromedriver (nothing downloaded), or a skip
    that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium: "
                                                                  "pip install 'fastervar[test]'")
    from selenium.webdriver.chrome.service import Service
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; .ci/run installs them where it can)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=900,900", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def _generate(browser, wait) -> None:
    """Click Generate and wait for the image (or the server's one line, which fails the test)."""
    browser.find_element("id", "generate").click()
    wait.until(lambda b: b.find_element("id", "time").text.startswith("generated in")
               or b.find_element("id", "error").text)
    assert not browser.find_element("id", "error").text


def _pixels(browser) -> list:
    """[width, height, RGBA bytes] of the image the page shows, as the browser decoded it."""
    return browser.execute_script(
        "const img = document.getElementById('image'); const c = document.createElement('canvas');"
        "c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');"
        "g.drawImage(img, 0, 0); return [c.width, c.height, Array.from(g.getImageData(0, 0, c.width, c.height).data)];")


def _screenshot(browser, tmp_path: Path, name: str) -> Path:
    """The page's screenshot, kept under FASTERVAR_SCREENSHOTS as `name` when that is set."""
    shot = tmp_path / "page.png"
    browser.save_screenshot(str(shot))
    keep = os.environ.get("FASTERVAR_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / name)
    return shot


@pytest.mark.slow
@pytest.mark.needs("ray.serve", "starlette")
def test_the_served_page_draws_what_fastervar_run_draws_in_a_real_browser(bundle, ray_root, tmp_path):
    """Headless Chromium loads GET /, picks a class and a seed, clicks Generate and waits for the
    image: its PNG and its decoded pixels are `fastervar run`'s for the same (class, seed, index)."""
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from fastervar.serve import ServeOptions, serve_bundle, shutdown

    browser = _browser(tmp_path)
    try:
        port = free_port()
        serve_bundle(ServeOptions(str(bundle)), "127.0.0.1", port, 1, blocking=False)
        browser.set_page_load_timeout(60)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: not b.find_element("id", "generate").get_attribute("disabled"))
        Select(browser.find_element("id", "class")).select_by_value("3")
        seed = browser.find_element("id", "seed")
        seed.clear()
        seed.send_keys("2")
        _generate(browser, wait)
        png = base64.b64decode(browser.execute_async_script(
            "const done = arguments[0];"
            "fetch(document.getElementById('image').src).then(r => r.arrayBuffer()).then(buf => {"
            "  let s = ''; for (const b of new Uint8Array(buf)) s += String.fromCharCode(b); done(btoa(s)); });"))
        rgba = _pixels(browser)
        shot = _screenshot(browser, tmp_path, "served-page.png")
        # the same key through the CLI's runtime
        out = tmp_path / "run"
        r = CliRunner().invoke(main, ["run", str(bundle), "--class", "3", "--seed", "2", "--out", str(out)])
        assert r.exit_code == 0, r.output
        expected = (out / "0000.png").read_bytes()
        assert png == expected
        from PIL import Image
        ours = np.asarray(Image.open(out / "0000.png").convert("RGBA"))
        w, h, data = rgba
        assert (h, w) == ours.shape[:2]
        assert np.array_equal(np.asarray(data, dtype=np.uint8).reshape(h, w, 4), ours)
        assert shot.stat().st_size > 1000
        # a request the server refuses (a class this bundle lacks) shows its one line, and the page
        # goes on working
        browser.execute_script("document.getElementById('class').add(new Option('99', '99'))")
        Select(browser.find_element("id", "class")).select_by_value("99")
        browser.find_element("id", "generate").click()
        wait.until(lambda b: b.find_element("id", "error").text)
        assert "class index 99 is out of range" in browser.find_element("id", "error").text
        Select(browser.find_element("id", "class")).select_by_value("1")
        browser.find_element("id", "generate").click()
        wait.until(lambda b: b.find_element("id", "time").text.startswith("generated in"))
        assert not browser.find_element("id", "error").text
    finally:
        browser.quit()
        shutdown()
    assert not _ours(ray_root), "Ray processes were left running"


@pytest.mark.slow
@pytest.mark.needs("ray.serve", "starlette")
def test_the_served_page_takes_a_typed_prompt_in_a_real_browser(text_bundle, ray_root, tmp_path):
    """Headless Chromium types a prompt, picks an aspect and a seed, clicks Generate: the image's
    pixels are `fastervar run --prompt`'s for the same key."""
    from PIL import Image
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from fastervar.serve import ServeOptions, serve_bundle, shutdown

    browser = _browser(tmp_path)
    try:
        port = free_port()
        serve_bundle(ServeOptions(str(text_bundle)), "127.0.0.1", port, 1, blocking=False)
        browser.set_page_load_timeout(60)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: not b.find_element("id", "generate").get_attribute("disabled"))
        assert not browser.find_element("id", "prompt").get_attribute("class").count("hidden")
        browser.find_element("id", "prompt").send_keys("a red fox")
        Select(browser.find_element("id", "aspect")).select_by_value("1:2")
        seed = browser.find_element("id", "seed")
        seed.clear()
        seed.send_keys("3")
        _generate(browser, wait)
        rgba = _pixels(browser)
        _screenshot(browser, tmp_path, "served-page-prompt.png")
        out = tmp_path / "run"
        r = CliRunner().invoke(main, ["run", str(text_bundle), "--prompt", "a red fox", "--aspect", "1:2", "--seed",
                                      "3", "--out", str(out)])
        assert r.exit_code == 0, r.output
        ours = np.asarray(Image.open(out / "0000.png").convert("RGBA"))
        w, h, data = rgba
        assert (h, w) == ours.shape[:2] and w > h                       # 1:2 is wider than tall
        assert np.array_equal(np.asarray(data, dtype=np.uint8).reshape(h, w, 4), ours)
        browser.find_element("id", "prompt").clear()                    # an empty prompt: its one line, shown
        browser.find_element("id", "generate").click()
        wait.until(lambda b: b.find_element("id", "error").text)
        assert "non-empty text" in browser.find_element("id", "error").text
    finally:
        browser.quit()
        shutdown()
    assert not _ours(ray_root), "Ray processes were left running"


@pytest.mark.slow
@pytest.mark.needs("ray.data")
def test_generate_batch_reads_a_prompts_file_for_a_text_bundle(text_bundle, ray_root, tmp_path):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS * 3) + "\n")
    r = CliRunner().invoke(main, ["generate-batch", str(text_bundle), "--prompts", str(tmp_path / "prompts.txt"),
                                  "--aspect", "1:2", "--seed", "5", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    direct = Pipeline.from_bundle(text_bundle).generate_items([(p, 5, i) for i, p in enumerate(PROMPTS * 3)],
                                                              aspect="1:2")
    for i in range(12):
        assert (tmp_path / "out" / image_name(i)).read_bytes() == png_bytes(direct.images[i]), f"image {i}"
