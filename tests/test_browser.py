"""The course in JupyterLab, driven by a real browser: headless Debian chromium through Playwright.

One JupyterLab server (127.0.0.1, a free port, token auth, DSV3_FAST=1) serves a copy of the repository's files;
one browser session then does what a learner does: opens the start page, runs notebooks 02, 03 and 07 up to
their explorer, moves two controls of each and checks that the widget rendered and the figure changed.
Screenshots go to outputs/browser/ (git-ignored) for looking at failures.

Needs chromium (``apt-get install chromium``; .ci/run installs it) and the ``playwright`` Python package (a dev
dependency). Playwright drives the system chromium through ``executable_path``: no browser is downloaded. When
chromium is missing the module is skipped with a message that says so; nothing else skips it.
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

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("DSV3_CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "outputs" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDGET_ERRORS = ("Error displaying widget", "model not found")

if not Path(CHROMIUM).exists():
    pytest.skip(f"browser test skipped: no chromium at {CHROMIUM} (install it: apt-get install -y chromium, "
                f"as .ci/run does; or set DSV3_CHROMIUM to its path)", allow_module_level=True)

# a dev dependency: missing, it fails
from playwright.sync_api import Page, sync_playwright  # noqa: E402

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_course(dest: Path) -> Path:
    """The files a fresh clone has (tracked + untracked-not-ignored), so nothing in the checkout is modified."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):      # not a git checkout: copy all but build outputs
        ignore = shutil.ignore_patterns(".git", "outputs", "runs", "build", "__pycache__", "*.egg-info")
        shutil.copytree(ROOT, dest, ignore=ignore)
        return dest
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base url, course copy): a JupyterLab server on the copy, stopped at the end."""
    tmp = tmp_path_factory.mktemp("lab")
    course = _copy_course(tmp / "course")
    settings = tmp / "settings"
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))  # every cell in the DOM: cell i = i-th .jp-Cell
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, DSV3_FAST="1", PYTHONPATH=str(course), OMP_NUM_THREADS="1",
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    env.pop("DSV3_CHROMIUM", None)
    log = open(tmp / "server.log", "w")  # noqa: SIM115  (closed in the finally below)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={course}", "--LabApp.expose_app_in_browser=True",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"],
        cwd=course, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{(tmp / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not answer within 180 s:\n" + (tmp / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token, course
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def page(lab, tmp_path_factory):
    """One chromium page on the lab, opened on the start page (the README's launch command opens it)."""
    base, token, _ = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(f"{base}/lab/tree/START.ipynb?token={token}")
        pg.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=120_000)
        yield pg
        context.close()


# ------------------------------------------------------------------------------------------ helpers (JS)
# NotebookActions' promises resolve when the cells have run; a JS timeout turns a hang into an error.
_JS_OPEN = """async ([path, ms]) => {
  const app = window.jupyterapp;
  const w = await app.commands.execute('docmanager:open', {path});
  await w.context.ready;
  await w.sessionContext.ready;
  app.shell.activateById(w.id);
  const t0 = Date.now();
  while (w.sessionContext.session?.kernel?.status !== 'idle') {
    if (Date.now() - t0 > ms) throw new Error('kernel not idle after ' + ms + ' ms');
    await new Promise(r => setTimeout(r, 200));
  }
  return w.id;
}"""

_JS_RUN_TO = """async ([needle, ms]) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget.content;
  const idx = nb.widgets.findIndex(c => c.model.type === 'code' && c.model.sharedModel.getSource().includes(needle));
  if (idx < 0) throw new Error('no code cell contains ' + needle);
  nb.activeCellIndex = idx;
  nb.deselectAll();
  const timeout = new Promise((_, no) =>
    setTimeout(() => no(new Error('cells still running after ' + ms + ' ms')), ms));
  const above = await Promise.race([app.commands.execute('notebook:run-all-above'), timeout]);
  nb.activeCellIndex = idx;
  const self = await Promise.race([app.commands.execute('notebook:run-cell'), timeout]);
  nb.widgets[idx].node.scrollIntoView();
  return [idx, above, self];
}"""

_JS_RUN_ONE = """async ([needle, ms]) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget.content;
  const idx = nb.widgets.findIndex(c => c.model.type === 'code' && c.model.sharedModel.getSource().includes(needle));
  if (idx < 0) throw new Error('no code cell contains ' + needle);
  await app.commands.execute('docmanager:save');
  nb.activeCellIndex = idx;
  nb.deselectAll();
  nb.widgets[idx].node.scrollIntoView();
  const timeout = new Promise((_, no) => setTimeout(() => no(new Error('cell still running after ' + ms + ' ms')), ms));
  const ok = await Promise.race([app.commands.execute('notebook:run-cell'), timeout]);
  return [idx, ok];
}"""

_JS_FIND = """(needle) => window.jupyterapp.shell.currentWidget.content.widgets.findIndex(
  c => c.model.type === 'code' && c.model.sharedModel.getSource().includes(needle))"""

_JS_IDLE = "() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'"

_JS_ERRORS = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  return nb.widgets.filter(c => c.model.type === 'code')
    .flatMap(c => Array.from(c.node.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], '
      + '.jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]')))
    .map(e => e.innerText.slice(0, 2000));
}"""


def open_notebook(page: Page, path: str, timeout_ms: int = 120_000) -> None:
    page.evaluate(_JS_OPEN, [path, timeout_ms])


def run_to(page: Page, needle: str, timeout_ms: int = 240_000):
    """Run every cell above the first code cell containing ``needle``, then that cell; its locator."""
    idx, above, ran = page.evaluate(_JS_RUN_TO, [needle, timeout_ms])
    if not (above and ran):
        errors = page.evaluate(_JS_ERRORS)
        pytest.fail(f"running up to {needle!r} failed (cell {idx}):\n" + "\n---\n".join(errors))
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(idx)


def save_and_run(page: Page, needle: str, timeout_ms: int = 600_000):
    """Save the notebook (the check cell grades the saved file), then run only the cell containing ``needle``."""
    idx, ok = page.evaluate(_JS_RUN_ONE, [needle, timeout_ms])
    assert ok, f"the cell with {needle!r} raised:\n" + "\n---\n".join(page.evaluate(_JS_ERRORS))
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(idx)


def figure_src(cell) -> str:
    return cell.locator(".jp-OutputArea-output img").first.get_attribute("src") or ""


def assert_widget_rendered(page: Page, cell) -> None:
    cell.locator(".jupyter-widgets.widget-container, .jupyter-widgets .widget-box").first.wait_for()
    text = cell.inner_text()
    for error in WIDGET_ERRORS:
        assert error not in text, f"widget did not render: {error!r} in\n{text[:2000]}"
    assert cell.locator(".jp-OutputArea-output img").count() >= 1, "the explorer shows no figure"


def wait_changed(cell, before: str, what: str, timeout_s: float = 60) -> str:
    """Wait until the explorer's figure differs from ``before`` (it is redrawn by the kernel)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = figure_src(cell)
        if now and now != before and cell.page.evaluate(_JS_IDLE):
            time.sleep(0.5)                        # the last redraw's image lands after the kernel goes idle
            return figure_src(cell)
        time.sleep(0.25)
    pytest.fail(f"the figure did not change within {timeout_s:.0f} s after {what}")


def slider(cell, label: str):
    return cell.locator(".widget-slider", has=cell.page.locator("label", has_text=label)).first


def set_slider(cell, label: str, value) -> None:
    """Type a value into the slider's readout, as a learner can (ipywidgets 8 readouts are editable)."""
    readout = slider(cell, label).locator(".widget-readout")
    readout.click()
    cell.page.keyboard.press("Control+A")
    cell.page.keyboard.type(str(value))
    cell.page.keyboard.press("Enter")


def slider_value(cell, label: str) -> str:
    return slider(cell, label).locator(".widget-readout").inner_text().strip()


def set_dropdown(cell, label: str, value) -> None:
    box = cell.locator(".widget-dropdown", has=cell.page.locator("label", has_text=label)).first
    box.locator("select").select_option(label=str(value))


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"))


# ------------------------------------------------------------------------------------------------ tests
def test_start_page_links_the_course(page):
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    panel.locator(".jp-RenderedMarkdown h1", has_text="start here").wait_for()
    shot(page, "start_page")
    links = panel.locator(".jp-RenderedMarkdown a")
    hrefs = [links.nth(i).get_attribute("href") or "" for i in range(links.count())]
    for target in ("notebooks/00_tour.ipynb", "notebooks/10_inference.ipynb", "exercises/02_mla.ipynb",
                   "exercises/09_full_model.ipynb", "docs/exercises.md"):
        assert any(target in h for h in hrefs), f"start page has no link to {target}: {hrefs}"
    text = panel.inner_text()
    for words in ("check()", "python -m dsv3_edu.grade", "Validate", "instructors"):
        assert words in text, f"start page does not mention {words!r}"
    panel.locator(".jp-RenderedMarkdown a", has_text="MLA").first.click()     # a link opens the notebook in the lab
    page.locator(".lm-TabBar-tab.lm-mod-current", has_text="02_mla.ipynb").first.wait_for()


def test_saved_explorers_read_as_a_note_and_a_figure(page):
    """Opened without running, an explorer shows the 'run this cell' note and its saved figure, not a repr."""
    for path, needle in (("notebooks/02_mla.ipynb", "kv_cache_explorer("),
                         ("notebooks/03_moe.ipynb", "routing_explorer("),
                         ("notebooks/07_dualpipe.ipynb", "schedule_explorer(")):
        open_notebook(page, path)
        idx = page.evaluate(_JS_FIND, needle)
        cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(idx)
        cell.scroll_into_view_if_needed()
        text = cell.locator(".jp-OutputArea").inner_text()
        assert "run this cell to move the controls" in text, f"{path}: no note in the saved explorer:\n{text[:500]}"
        assert "VBox(" not in text and "HBox(" not in text, f"{path}: a widget repr shows:\n{text[:500]}"
        assert cell.locator(".jp-OutputArea-output img").count() >= 1, f"{path}: the saved explorer has no figure"
        shot(page, f"saved_{Path(path).stem}_explorer")


def test_explorer_02_mla(page):
    open_notebook(page, "notebooks/02_mla.ipynb")
    cell = run_to(page, "kv_cache_explorer(")
    assert_widget_rendered(page, cell)
    shot(page, "02_explorer_before")
    first = figure_src(cell)
    set_slider(cell, "n_h (heads)", 24)
    second = wait_changed(cell, first, "n_h = 24")
    gqa = cell.locator(".widget-dropdown", has=page.locator("label", has_text="GQA groups")).locator("option")
    assert gqa.all_inner_texts() == ["1", "2", "3", "4", "6", "8", "12", "24"], "GQA groups must divide n_h = 24"
    set_dropdown(cell, "GQA groups", 3)
    wait_changed(cell, second, "GQA groups = 3")
    shot(page, "02_explorer_after")
    assert "Error displaying widget" not in cell.inner_text()


def test_explorer_03_moe(page):
    open_notebook(page, "notebooks/03_moe.ipynb")
    cell = run_to(page, "routing_explorer(")
    assert_widget_rendered(page, cell)
    shot(page, "03_explorer_before")
    first = figure_src(cell)
    set_dropdown(cell, "groups", 8)                 # 8 groups of 2 experts
    second = wait_changed(cell, first, "groups = 8")
    set_slider(cell, "groups kept", 1)              # 1 group kept holds 2 experts: top-k follows
    wait_changed(cell, second, "groups kept = 1")
    assert slider_value(cell, "top-k") == "2", "top-k was not limited to the experts of the kept group"
    shot(page, "03_explorer_after")


def test_explorer_07_dualpipe(page):
    open_notebook(page, "notebooks/07_dualpipe.ipynb")
    cell = run_to(page, "schedule_explorer(")
    assert_widget_rendered(page, cell)
    shot(page, "07_explorer_before")
    first = figure_src(cell)
    set_dropdown(cell, "method", "1f1b")
    second = wait_changed(cell, first, "method = 1f1b")
    set_slider(cell, "micro-batches", 12)
    wait_changed(cell, second, "micro-batches = 12")
    shot(page, "07_explorer_after")


# ------------------------------------------------------------------------------------- the check cell
def _solved_copy(course: Path, name: str) -> str:
    """exercises/<stem>_solved.ipynb: the exercise with each stub replaced by the solution's code."""
    import nbformat

    from dsv3_edu.grade.cells import grade_id, is_solution_cell

    ex = nbformat.read(course / "exercises" / name, as_version=4)
    sol = nbformat.read(course / "solutions" / name, as_version=4)
    code = {grade_id(c): c.source for c in sol.cells if is_solution_cell(c)}
    for c in ex.cells:
        if is_solution_cell(c):
            c.source = code[grade_id(c)]
    out = f"exercises/{Path(name).stem}_solved.ipynb"
    nbformat.write(ex, course / out)
    return out


def _report(cell):
    report = cell.locator(".dsv3-grade-report")
    report.wait_for(timeout=600_000)
    rows = report.locator("tbody tr")
    cells = [[td.strip() for td in rows.nth(i).locator("td").all_inner_texts()] for i in range(rows.count())]
    return report.inner_text(), cells[:-1], cells[-1]          # tasks, then the TOTAL row


def test_check_cell_gives_full_marks_to_the_solution(page, lab):
    path = _solved_copy(lab[2], "02_mla.ipynb")
    open_notebook(page, path)
    cell = save_and_run(page, "check()")
    text, tasks, total = _report(cell)
    cell.scroll_into_view_if_needed()
    shot(page, "check_cell_full_marks")
    assert tasks and all(t[1] == t[2] and t[3] == "passed" for t in tasks), text
    assert total[0] == "TOTAL" and total[1] == total[2] and total[3] == "100%", text


def test_check_cell_gives_zero_with_reasons_to_the_untouched_exercise(page):
    open_notebook(page, "exercises/02_mla.ipynb")
    cell = save_and_run(page, "check()")
    text, tasks, total = _report(cell)
    cell.scroll_into_view_if_needed()
    shot(page, "check_cell_untouched")
    assert tasks and total[2] == "0", text
    for name, _points, score, status, message in tasks:
        assert score == "0" and status != "passed" and message, f"task {name} has no reason for its 0:\n{text}"
