"""The course site (`make site`) built from the committed notebooks, opened in a real browser.

The site is built with the command `make site` runs (printed by `make site-command`) into a temporary folder,
served on 127.0.0.1 and opened in headless Debian Chromium through Playwright, as tests/test_browser.py opens
JupyterLab. It checks what a reader of the published site sees: the landing page lists every course notebook,
notebook 02's page shows its figures, every notebook's link to the next one leads to that notebook's page, and the
links of the introduction (the README) resolve. It skips, saying why, where Sphinx, Chromium or Playwright is
missing.
"""
from __future__ import annotations

import functools
import http.server
import json
import re
import shlex
import sys
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, missing_browser_reason

ROOT = Path(__file__).resolve().parents[1]
COURSE = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))  # 00_primer (if there), 01 ... 07
FIGURE_NOTEBOOK = ROOT / "notebooks" / "02_spurious_correlations.ipynb"


def missing_sphinx_reason() -> str | None:
    """Why the site cannot be built here, or None when it can."""
    for module in ("sphinx", "myst_nb", "sphinx_book_theme"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is missing: pip install -e '.[site]' (make test installs it)"
    return None


pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built by `make site`'s own command into a temporary folder; the build time is printed."""
    if missing_sphinx_reason() is not None:
        pytest.skip(str(missing_sphinx_reason()))
    out = tmp_path_factory.mktemp("site")
    command = subprocess.run(["make", "-s", "site-command", f"SITE_DIR={out}"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
    argv = shlex.split(command)
    argv[0] = str(ROOT / argv[0]) if not Path(argv[0]).is_absolute() else argv[0]
    started = time.monotonic()
    build = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    print(f"site build: {time.monotonic() - started:.1f} s; warnings:\n{build.stderr[-3000:]}")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The built site served over HTTP on a free loopback port (as GitHub Pages serves it); yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # the browser drops connections it no longer needs (a page left mid-load): not a failure

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def status(url: str) -> int:
    """The HTTP status of a GET on the local server."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def page_of(notebook: Path) -> str:
    """The site path of a notebook's page."""
    return f"notebooks/{notebook.stem}.html"


def image_outputs(notebook: Path) -> int:
    """How many PNG or SVG outputs the committed notebook stores (read from the file, not from the site)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum(1 for cell in cells if cell["cell_type"] == "code" for output in cell.get("outputs", [])
               if {"image/png", "image/svg+xml"} & set(output.get("data", {})))


def test_the_build_writes_every_page(site: Path) -> None:
    assert (site / "index.html").exists() and (site / "docs" / "index.html").exists() and (site / ".nojekyll").exists()
    for notebook in COURSE:
        assert (site / page_of(notebook)).exists(), f"no page for {notebook.name}"
    for solution in (ROOT / "notebooks" / "solutions").glob("*.ipynb"):
        assert (site / "notebooks" / "solutions" / f"{solution.stem}.html").exists()
    assert (site / "README.html").exists()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright (never `playwright install`: it downloads)."""
    reason = missing_browser_reason()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    """A fresh tab."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    yield page
    page.close()


def test_the_landing_page_leads_to_every_notebook(served: str, page) -> None:
    started = time.monotonic()
    page.goto(served + "/", wait_until="domcontentloaded")  # the root redirects to docs/index.html
    page.wait_for_url(re.compile(r"/docs/index\.html$"), timeout=15_000, wait_until="domcontentloaded")
    hrefs = page.eval_on_selector_all("article a[href]", "links => links.map(a => a.href)")
    for notebook in COURSE:
        assert any(h.endswith("/" + page_of(notebook)) for h in hrefs), f"the landing page does not list {notebook.name}"
    print(f"landing page: {time.monotonic() - started:.1f} s")


def test_notebook_02_shows_its_figures(served: str, page) -> None:
    page.goto(f"{served}/{page_of(FIGURE_NOTEBOOK)}", wait_until="domcontentloaded")
    heading = page.locator("article h1").first.inner_text()
    assert heading.startswith("02"), heading
    stored = image_outputs(FIGURE_NOTEBOOK)
    assert stored > 0, "notebook 02 is committed without figures: store its outputs with `make notebook-outputs`"
    images = page.locator("article .cell_output img")
    page.wait_for_function("() => [...document.querySelectorAll('article .cell_output img')].every(i => i.complete)",
                           timeout=15_000)
    assert images.count() >= stored, f"the page shows {images.count()} figures, the notebook stores {stored}"
    # Each figure is a loaded image with a real size, not a broken link.
    sizes = images.evaluate_all("imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert all(done and width > 50 and height > 50 for done, width, height in sizes), sizes


def test_each_notebook_links_to_the_next_and_the_link_resolves(served: str, page) -> None:
    """From the first notebook, follow each notebook's own link to the next one (in its text, not the sidebar's or
    the footer's) through the whole course."""
    started = time.monotonic()
    page.goto(f"{served}/{page_of(COURSE[0])}", wait_until="domcontentloaded")
    for notebook, following in zip(COURSE, COURSE[1:]):
        link = page.locator(f"article a[href='{following.stem}.html']").last
        assert link.count() == 1, f"{notebook.name} has no link to {following.name}"
        link.click()
        page.wait_for_url(re.compile(re.escape(page_of(following)) + "$"), timeout=15_000, wait_until="domcontentloaded")
        heading = page.locator("article h1").first.inner_text()
        assert heading.startswith(following.name[:2]), f"{following.name}'s page shows {heading!r}"
    print(f"followed {len(COURSE) - 1} next-notebook links in {time.monotonic() - started:.1f} s")


def test_the_introduction_links_resolve(served: str, page) -> None:
    page.goto(f"{served}/README.html", wait_until="domcontentloaded")
    local = page.eval_on_selector_all(
        "article a[href]", "links => links.map(a => a.href).filter(h => h.startsWith(location.origin))")
    local = sorted({href.split("#")[0] for href in local})
    assert any(h.endswith(page_of(COURSE[-1])) for h in local), "the introduction does not link the last notebook"
    broken = [href for href in local if status(href) != 200]
    assert not broken, f"links of the introduction that do not resolve: {broken}"


def test_make_site_installs_the_site_extra_and_nothing_else(tmp_path: Path) -> None:
    """`make site` on a fresh machine installs exactly the `site` extra of pyproject.toml (no torch) and builds."""
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]["site"]
    dry = subprocess.run(["make", "-n", "-B", "site", f"VENV={tmp_path / 'venv'}", f"SITE_DIR={tmp_path / 'out'}"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    (install,) = [line for line in dry.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    argv = shlex.split(install)
    assert argv[argv.index("install") + 1:] == extra, install
    assert f"sphinx-build -b html -q -c docs . {tmp_path / 'out'}" in dry


def test_the_pages_workflow_publishes_what_make_site_builds() -> None:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "pages.yml").read_text(encoding="utf-8"))
    steps = workflow["jobs"]["build"]["steps"]
    (build,) = [step for step in steps if "make site" in step.get("run", "")]
    site_dir = re.search(r"SITE_DIR=(\S+)", build["run"]).group(1)
    (upload,) = [step for step in steps if step.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert upload["with"]["path"] == site_dir
    assert workflow["permissions"]["pages"] == "write" and workflow["jobs"]["deploy"]["needs"] == "build"
    assert any(step.get("uses", "").startswith("actions/deploy-pages") for step in workflow["jobs"]["deploy"]["steps"])
