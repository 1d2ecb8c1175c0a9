"""A real browser: JupyterLab on localhost, a notebook run in headless Chromium, its widget found.

What a learner does with `make lab`, automated: the test starts JupyterLab from this venv on a free
localhost port with a random token, serving a temporary copy of ``notebooks/``; opens the notebook
in Debian's ``chromium`` driven by playwright; runs all cells; waits until every cell has run (and
fails on the first error, naming it); checks that an ipywidgets slider is on the page, moves it and
presses Run (the figure is redrawn); and saves a screenshot in the test's folder, copied to
``runs/browser/`` for humans.

The notebook runs in a copy prepared by papermill with ``PROFILE = "smoke"``, so it takes seconds.
It is the one named by :data:`BROWSER_NOTEBOOK` (notebook 03, whose "Try it yourself" section is a
:mod:`helpers.widgets` experiment); set it to ``None`` to use a small notebook generated here.

The browser: ``$WORKBOOK_CHROMIUM`` or ``chromium`` on ``PATH`` (Debian: ``apt-get install
chromium``; ``.ci/run`` installs it). ``playwright install`` is not needed (and cannot download
offline): playwright drives the system browser through ``executable_path``. The test skips only
when there is no browser binary.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import papermill as pm
import pytest
from conftest import write_notebook
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent

# The notebook the browser opens. None: the small generated widget notebook below.
BROWSER_NOTEBOOK: Path | None = ROOT / "notebooks" / "03_finetune_cnn.ipynb"

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
SLIDER = ".jupyter-widgets.widget-slider, .widget-slider, [role=slider]"
START_S, RUN_S = 90, 240  # JupyterLab start; all cells (a smoke notebook) -- generous on 2 busy cores


def chromium() -> str | None:
    """The system Chromium: ``$WORKBOOK_CHROMIUM``, else ``chromium``/``chromium-browser`` on PATH."""
    explicit = os.environ.get("WORKBOOK_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def widget_demo(path: Path) -> Path:
    """A small notebook shaped like a course notebook, whose experiment is a helpers.widgets explorer."""
    parameters = new_code_cell('PROFILE = "quick"\nSEED = None\nOVERRIDES = {}')
    parameters.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[
        new_markdown_cell("# Widget demo\nA learning-rate / budget explorer drawn by `helpers.widgets`."),
        parameters,
        new_code_cell(
            "import numpy as np\n"
            "import matplotlib.pyplot as plt\n"
            "from helpers.widgets import explore, int_slider, log_slider, choice\n"
            "STEPS = {'smoke': 20, 'quick': 200, 'full': 2000}[PROFILE]"),
        new_code_cell(
            "def loss_curve(budget, lr, schedule):\n"
            "    steps = np.arange(1, STEPS + 1)\n"
            "    decay = steps if schedule == 'constant' else np.sqrt(steps)\n"
            "    fig, ax = plt.subplots(figsize=(5, 3))\n"
            "    ax.plot(steps, 1 / (1 + lr * budget * decay), label=f'{budget} labels, lr={lr:.0e}')\n"
            "    ax.set(xlabel='step', ylabel='loss'); ax.legend()\n"
            "    return fig\n"
            "\n"
            "explore(loss_curve, title='toy loss curve',\n"
            "        budget=int_slider(10, 1, 100, description='labels/class'),\n"
            "        lr=log_slider(1e-2, 1e-4, 1.0, description='learning rate'),\n"
            "        schedule=choice(['constant', 'sqrt'], description='schedule'))"),
        new_code_cell("print('all cells ran')"),
    ])
    return write_notebook(nb, path, "demo")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(url: str, token: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {START_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def lab(tmp_path, shared_store):
    """JupyterLab serving a copy of notebooks/ plus the prepared notebook; yields (url, token, name)."""
    root = tmp_path / "lab"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    source = BROWSER_NOTEBOOK or widget_demo(tmp_path / "widget_demo.ipynb")
    name = f"browser_{source.stem}.ipynb"
    pm.execute_notebook(str(source), str(root / name), parameters={"PROFILE": "smoke"},
                        prepare_only=True, kernel_name="python3")

    settings = tmp_path / "lab-settings"  # a fresh profile that never asks about (or fetches) news
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("WORKBOOK_STATIC", "JPY_SESSION_NAME")}
    env.update(WORKBOOK_STORE=str(shared_store),  # the suite's store: 01's CNN is already there WORKBOOK_RESULTS=str(tmp_path / "lab.results.json"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),  # no user settings, no workspaces
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
               OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    log = tmp_path / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, token, proc, log)
        yield url, token, name
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Every code cell's execution count and first error, and the kernel's status.
_STATE_JS = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.content.model || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = [];
  for (const cell of panel.content.model.cells) {
    if (cell.type !== 'code') continue;
    const error = cell.outputs.toJSON().find(o => o.output_type === 'error');
    cells.push({count: cell.executionCount, empty: cell.sharedModel.getSource().trim() === '',
                error: error ? `${error.ename}: ${error.evalue}` : null});
  }
  return {kernel: kernel ? kernel.status : null, cells};
}"""


def _run_all_and_wait(page) -> list[dict]:
    page.wait_for_function(
        "() => { const p = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " return p && p.sessionContext && p.sessionContext.isReady"
        " && p.sessionContext.session.kernel.status === 'idle'; }", timeout=START_S * 1000)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    deadline, state = time.monotonic() + RUN_S, None
    while time.monotonic() < deadline:
        state = page.evaluate(_STATE_JS)
        errors = [c["error"] for c in state["cells"] if c["error"]]
        if errors:
            pytest.fail(f"a cell failed in the browser: {errors[0]}")
        if state["kernel"] == "idle" and all(c["count"] for c in state["cells"] if not c["empty"]):
            return state["cells"]
        time.sleep(0.5)
    pytest.fail(f"cells still running after {RUN_S} s: {json.dumps(state)}")


@pytest.mark.browser
@pytest.mark.skipif(chromium() is None, reason="no Chromium binary (install Debian's `chromium` "
                    "package, or set $WORKBOOK_CHROMIUM to a Chromium/Chrome executable)")
def test_notebook_runs_in_jupyterlab_with_a_live_widget(lab, tmp_path):
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[dev]' (it is a dev dependency)")

    url, token, name = lab
    shot = tmp_path / f"{Path(name).stem}.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.goto(f"{url}/lab/tree/{name}?token={token}", timeout=START_S * 1000)
            cells = _run_all_and_wait(page)

            slider = page.locator(SLIDER).first
            slider.wait_for(state="visible", timeout=60_000)  # the widget view is rendered
            slider.scroll_into_view_if_needed()
            assert page.locator(SLIDER).count() >= 1
            # an image inside the widget's output area: the explorer drew its first figure
            figure = page.locator(".widget-output img, .jupyter-widgets-output-area img").first
            figure.wait_for(state="visible", timeout=60_000)
            run_button = page.locator("button.widget-button", has_text="Run")
            if run_button.count():  # an explore() widget: move a slider, rerun, see it redraw
                handle = page.locator(".widget-slider .noUi-handle, [role=slider]").first
                handle.focus()
                page.keyboard.press("ArrowRight")
                run_button.first.click()
                page.get_by_text("run 2 done").first.wait_for(timeout=RUN_S * 1000)
            figure.scroll_into_view_if_needed()  # the controls and the redrawn figure in view
            page.screenshot(path=str(shot))
        finally:
            browser.close()

    assert shot.stat().st_size > 10_000 and len(cells) >= 2
    copy = ROOT / "runs" / "browser" / shot.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, copy)
    print(f"screenshot: {copy}")
