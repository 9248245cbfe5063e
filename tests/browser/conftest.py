"""The book in a real browser: JupyterLab in headless Chromium, used the way a reader uses it.

Run with `make test-browser`, or `pytest tests/browser` once `tools/browser_deps.sh` has
installed Debian's Chromium (/usr/bin/chromium) and the `playwright` Python package.
These tests never run as part of `pytest tests`: they are collected only when the command
line names tests/browser (or a file in it), because they need a browser and take minutes.

What the fixtures set up, once per session:
- `lab`: `jupyter lab` started as `make lab` starts it, on a free port of 127.0.0.1, with a
  random token, in throw-away Jupyter/IPython state directories, serving a COPY of
  chapters/ (running cells in the browser must never touch the committed notebooks).
- `browser`: Debian's Chromium driven by Playwright (no browser is ever downloaded).
- `notebook`: opens one chapter in a fresh browser context; its methods run all cells and
  drive ipywidgets by their description labels.
Screenshots go to a temporary folder and are listed at the end of the run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The chapters to serve (copied); another folder can be tried, e.g. a draft of a chapter.
CHAPTERS = Path(os.environ.get("FPNBOOK_BROWSER_CHAPTERS", REPO / "chapters"))
HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
# No GPU, no network beyond 127.0.0.1, nothing that phones home or asks questions.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAB_START_TIMEOUT_S = 90
RUN_ALL_TIMEOUT_S = 240
SCREENSHOTS: list[Path] = []


# ---------------------------------------------------------------- opt-in collection


def _asked_for(config: pytest.Config) -> bool:
    """True when an argument on the command line lies inside tests/browser."""
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # `pytest tests` (make test) walks past this folder; `pytest tests/browser` runs it.
    if collection_path.name.startswith("test_") and not _asked_for(config):
        return True
    return None


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if SCREENSHOTS:
        terminalreporter.section("browser screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(str(path))


# ---------------------------------------------------------------- the server


@dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT, no trailing slash
    token: str
    chapters: Path  # the temporary copy the server serves
    log: Path

    def api(self, method: str, path: str, token: str | None = "") -> tuple[int, object]:
        """(status, decoded JSON or None) of a REST call; token=None sends no token."""
        token = self.token if token == "" else token
        request = urllib.request.Request(self.url + path, method=method)
        if token is not None:
            request.add_header("Authorization", f"token {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
                return response.status, (json.loads(body) if body else None)
        except urllib.error.HTTPError as error:
            return error.code, None

    def shutdown_kernels(self) -> None:
        status, kernels = self.api("GET", "/api/kernels")
        for kernel in kernels if status == 200 else []:
            self.api("DELETE", f"/api/kernels/{kernel['id']}")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_of_the_book(root: Path) -> Path:
    """root/ mirrors the repository: chapters/ copied, every other top-level entry a symlink.

    Chapters may reach ../data or ../experiments by relative path, and jupytext.toml must
    be found above chapters/ as in `make lab`; only chapters/ is written to by a reader.
    """
    root.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if entry.name in {"chapters", ".git", ".pytest_cache", ".hypothesis"}:
            continue
        (root / entry.name).symlink_to(entry)
    shutil.copytree(CHAPTERS, root / "chapters", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    return root / "chapters"


def _quiet_lab_settings(settings: Path) -> None:
    """User settings a reader would not have, but that keep the page stable under test."""
    files = {
        # No news or update pop-ups (they would also try to reach the internet).
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
        # Keep every cell in the DOM, so the tests see all prompts and outputs.
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, content in files.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lab")
    chapters = _copy_of_the_book(root / "book")
    state = root / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
    env.update(
        JUPYTER_RUNTIME_DIR=str(state / "runtime"),
        JUPYTER_CONFIG_DIR=str(state / "config"),
        JUPYTER_DATA_DIR=str(state / "data"),
        JUPYTERLAB_SETTINGS_DIR=str(state / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(state / "lab-workspaces"),
        IPYTHONDIR=str(state / "ipython"),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),  # kernels share 2 cores with the browser
        PYTHONUNBUFFERED="1",
    )
    _quiet_lab_settings(state / "lab-settings")
    port, token = _free_port(), secrets.token_hex(24)
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--notebook-dir={chapters}", f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0",
    ]  # fmt: skip
    if os.geteuid() == 0:  # CI and these machines run as root; jupyter refuses that unless told
        command.append("--allow-root")
    log = root / "lab.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=chapters, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(url=f"http://127.0.0.1:{port}", token=token, chapters=chapters, log=log)
    try:
        deadline = time.monotonic() + LAB_START_TIMEOUT_S
        while server_status(server) != 200:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within {LAB_START_TIMEOUT_S} s:\n{server.log_tail()}")
            time.sleep(0.5)
        print(f"\njupyter lab at {server.url} serving {chapters} (log: {log})")
        yield server
    finally:
        if process.poll() is None:
            server.shutdown_kernels()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def server_status(server: Lab) -> int | None:
    try:
        return server.api("GET", "/api/status")[0]
    except OSError:
        return None


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found; run tools/browser_deps.sh (or `make test-browser`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the `playwright` package is missing; run tools/browser_deps.sh (or `make test-browser`)")
    # Playwright gives every launch a fresh temporary --user-data-dir and removes it after.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def screenshot(screenshot_dir: Path):
    """screenshot(page_or_element, name) -> the PNG's path, listed at the end of the run."""
    return lambda target, name: save_screenshot(target, screenshot_dir, name)


def save_screenshot(target, folder: Path, name: str) -> Path:
    """Screenshot of a Playwright page or element, recorded for the end-of-run list."""
    path = folder / f"{name}.png"
    target.screenshot(path=str(path))
    SCREENSHOTS.append(path)
    print(f"screenshot: {path}")
    return path


# ---------------------------------------------------------------- a notebook in the page


# JupyterLab renders an error output with the stderr mime type, and warnings too: only
# lines that look like a traceback or an exception count as errors.
ERROR_LINE = re.compile(r"^(Traceback \(most recent call last\)|\w*(Error|Exception)\b)", re.MULTILINE)


class Notebook:
    """One chapter open in JupyterLab, with the few actions a reader takes."""

    def __init__(self, page, lab: Lab, screenshots: Path, name: str):
        self.page, self.lab, self.screenshots, self.name = page, lab, screenshots, name

    def open(self) -> "Notebook":
        # A workspace of its own, so Lab does not reopen tabs left by another test.
        workspace = f"test-{secrets.token_hex(4)}"
        self.page.goto(f"{self.lab.url}/lab/workspaces/{workspace}/tree/{self.name}?token={self.lab.token}")
        self.page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=60_000)
        self.wait_for_kernel_idle(timeout_s=90)
        return self

    # -- kernel and cells

    def kernel_status(self) -> str | None:
        return self.page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator").first.get_attribute("data-status")

    def prompts(self) -> list[str]:
        return [p.strip() for p in self.page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt").all_inner_texts()]

    def kernel(self) -> dict | None:
        """The server's record of this notebook's kernel (REST /api/sessions), None before it starts."""
        status, sessions = self.lab.api("GET", "/api/sessions")
        for session in sessions if status == 200 else []:
            if session["path"] == self.name and session.get("kernel"):
                return session["kernel"]
        return None

    def wait_for_kernel_idle(self, timeout_s: float) -> None:
        """Until the kernel exists, the page is connected to it, and both say idle.

        The toolbar reads "idle" for a moment before any kernel has started; running
        cells then would open the Select Kernel dialog instead of running them.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            kernel = self.kernel()
            if kernel and kernel["connections"] >= 1 and kernel["execution_state"] == "idle" and self.kernel_status() == "idle":
                return
            if time.monotonic() > deadline:
                self.screenshot(f"{Path(self.name).stem}-no-kernel")
                pytest.fail(f"kernel of {self.name} not idle after {timeout_s} s: {kernel}, page says {self.kernel_status()!r}")
            time.sleep(0.25)

    def wait_until_done(self, timeout_s: float = RUN_ALL_TIMEOUT_S) -> None:
        """Until no cell is queued or running and the kernel has been idle for a moment."""
        deadline, idle_since = time.monotonic() + timeout_s, None
        while True:
            busy = self.kernel_status() != "idle" or any("*" in p for p in self.prompts())
            now = time.monotonic()
            idle_since = None if busy else (idle_since or now)
            if idle_since and now - idle_since > 1.0:
                return
            if now > deadline:
                self.screenshot(f"{Path(self.name).stem}-timeout")
                pytest.fail(f"{self.name} still running after {timeout_s} s; prompts {self.prompts()}")
            time.sleep(0.25)

    def menu(self, menu: str, item: str) -> None:
        """Click `menu` in the menu bar, then `item` in it."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{re.escape(menu)}$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(item)}$")).click()

    def run_all(self) -> float:
        """Edit > Clear Outputs of All Cells, then Run > Run All Cells; prints and returns the seconds it took.

        Clearing first means every output checked afterwards came from this run, not from
        the outputs stored in the notebook.
        """
        self.menu("Edit", "Clear Outputs of All Cells")
        self.page.wait_for_function(
            "() => ![...document.querySelectorAll('.jp-NotebookPanel .jp-InputPrompt')].some(p => /\\d/.test(p.textContent))",
            timeout=10_000,
        )
        start = time.monotonic()
        self.menu("Run", "Run All Cells")
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-NotebookPanel .jp-InputPrompt')].some(p => p.textContent.includes('*'))"
            " || document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')?.dataset.status !== 'idle'"
            " || [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')].every(p => /\\d/.test(p.textContent))",
            timeout=10_000,
        )
        self.wait_until_done()
        seconds = time.monotonic() - start
        print(f"{self.name}: Run All Cells took {seconds:.1f} s")
        return seconds

    def errors(self) -> list[str]:
        """Texts of error-like outputs: tracebacks, FooError lines, widgets that failed to show."""
        found = []
        stderr = self.page.locator('.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        found += [t for t in stderr.all_inner_texts() if ERROR_LINE.search(t)]
        outputs = self.page.locator(".jp-NotebookPanel .jp-OutputArea-output").all_inner_texts()
        found += [t for t in outputs if "Traceback (most recent call last)" in t or "Error displaying widget" in t]
        return list(dict.fromkeys(found))

    def assert_ran_cleanly(self) -> None:
        dialogs = self.page.locator(".jp-Dialog").all_inner_texts()
        assert not dialogs, f"{self.name}: a dialog is open after Run All: {dialogs}"
        errors = self.errors()
        assert not errors, f"{self.name} shows errors:\n" + "\n----\n".join(e[-2000:] for e in errors)
        unrun = [p for p in self.prompts() if not re.fullmatch(r"\[\d+\]:", p)]
        assert not unrun, f"{self.name}: cells not executed after Run All: {unrun}"

    # -- widgets, found by their description label

    def labelled(self, kind: str, label: str):
        """Relative locator of ipywidgets of `kind` whose description is `label`."""
        css = {
            "slider": ".widget-slider",
            "dropdown": ".widget-dropdown",
            "toggle-buttons": ".widget-toggle-buttons",
            "checkbox": ".widget-checkbox",
            "text": ".widget-text",
        }[kind]
        exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
        # A checkbox shows its description beside the box (.widget-label-basic), the others before it.
        return self.page.locator(css).filter(has=self.page.locator(".widget-label, .widget-label-basic", has_text=exact))

    def widget(self, kind: str, label: str):
        """The ipywidgets box of `kind` ('slider', 'dropdown', 'toggle-buttons', ...) labelled `label`."""
        box = self.page.locator(".jp-NotebookPanel").locator(self.labelled(kind, label))
        assert box.count() >= 1, f"no {kind} labelled {label!r} in {self.name}"
        return box.first

    def output_holding(self, kind: str, label: str):
        """The cell output that holds the widget of `kind` labelled `label`: an explorer's whole box."""
        outputs = self.page.locator(".jp-NotebookPanel .jp-OutputArea-output")
        return outputs.filter(has=self.labelled(kind, label)).first

    def slider_value(self, label: str) -> str:
        return self.widget("slider", label).locator(".widget-readout").first.inner_text().strip()

    def set_slider(self, label: str, value) -> None:
        """Type a value into the slider's readout, as a reader can, and press Enter."""
        readout = self.widget("slider", label).locator(".widget-readout").first
        readout.click()
        self.page.keyboard.press("ControlOrMeta+A")
        self.page.keyboard.type(str(value))
        self.page.keyboard.press("Enter")

    def nudge_slider(self, label: str, key: str = "ArrowRight", times: int = 1) -> None:
        """Focus the slider's handle and press an arrow key, one step per press."""
        handle = self.widget("slider", label).locator(".noUi-handle").first
        handle.focus()
        for _ in range(times):
            self.page.keyboard.press(key)

    def choose(self, label: str, option: str) -> None:
        """Pick `option` in the toggle buttons or dropdown labelled `label`."""
        buttons = self.page.locator(".jp-NotebookPanel").locator(self.labelled("toggle-buttons", label))
        if buttons.count():
            buttons.first.locator("button", has_text=re.compile(rf"^\s*{re.escape(option)}\s*$")).click()
        else:
            self.widget("dropdown", label).locator("select").select_option(label=option)

    def chosen(self, label: str) -> str:
        """The pressed button of the toggle buttons labelled `label`."""
        return self.widget("toggle-buttons", label).locator("button.mod-active").first.inner_text().strip()

    def set_checkbox(self, label: str, checked: bool) -> None:
        self.widget("checkbox", label).locator("input[type=checkbox]").set_checked(checked)

    def wait_for_change(self, read, before, timeout_s: float = 30):
        """Poll read() until it differs from `before` and the kernel is idle; returns it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = read()
            if value != before and self.kernel_status() == "idle":
                return value
            time.sleep(0.2)
        return read()

    def screenshot(self, name: str, target=None) -> Path:
        return save_screenshot(target or self.page, self.screenshots, name)


@pytest.fixture
def notebook(lab: Lab, browser, screenshot_dir: Path):
    """factory(name) -> an opened Notebook for chapters/<name>; skips if the chapter is missing."""
    contexts = []

    def open_chapter(name: str) -> Notebook:
        if not (lab.chapters / name).is_file():
            pytest.skip(f"chapters/{name} does not exist yet")
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        return Notebook(context.new_page(), lab, screenshot_dir, name).open()

    yield open_chapter
    for context in contexts:
        context.close()
    lab.shutdown_kernels()  # the next chapter gets the CPU to itself
