"""helpers.widgets: controls, the static fallback (no frontend), the interactive Run button."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from helpers import widgets  # noqa: E402


@pytest.fixture
def shown(monkeypatch) -> list:
    """Everything :func:`IPython.display.display` is asked to show."""
    import IPython.display

    seen: list = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: seen.extend(objs))
    return seen


def _experiment(calls: list):
    def run(labels, lr, method):
        calls.append({"labels": labels, "lr": lr, "method": method})
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot(range(labels), [lr * i for i in range(labels)], label=method)
        return fig
    return run


def _controls():
    return dict(labels=widgets.int_slider(10, 1, 50, description="labels/class"),
                lr=widgets.log_slider(1e-3, 1e-5, 1e-1),
                method=widgets.choice(["linear probe", "full fine-tuning"], value="full fine-tuning"))


def test_static_fallback_runs_once_with_the_controls_values(monkeypatch, shown, capsys):
    monkeypatch.setenv("WORKBOOK_STATIC", "1")
    plt.close("all")
    calls: list = []
    state = widgets.explore(_experiment(calls), title="label budget", **_controls())
    assert state.static and state.runs == 1 and state.widget is None
    assert calls == [{"labels": 10, "lr": pytest.approx(1e-3), "method": "full fine-tuning"}]
    assert state.values == calls[0]
    assert "label budget: static run with labels=10" in capsys.readouterr().out
    (image,) = shown
    assert image.format == "png" and image.data[:4] == b"\x89PNG"  # a plain PNG any viewer shows
    assert plt.get_fignums() == []  # closed: the inline backend will not draw it a second time


def test_interactive_run_button_passes_the_current_values(monkeypatch, shown):
    monkeypatch.setenv("WORKBOOK_STATIC", "0")
    calls: list = []
    controls = _controls()
    state = widgets.explore(_experiment(calls), **controls)
    assert not state.static and state.widget is not None and state.runs == 1  # drawn once at start
    assert state.widget in shown and all(c in state.widget.children for c in controls.values())
    controls["labels"].value, controls["method"].value = 7, "linear probe"
    controls["lr"].value = 1e-2
    state.button.click()
    assert state.runs == 2 and calls[-1] == {"labels": 7, "lr": pytest.approx(1e-2), "method": "linear probe"}
    assert not state.button.disabled

    lazy = widgets.explore(_experiment(calls), run_now=False, **_controls())
    assert lazy.runs == 0 and len(calls) == 2


def test_a_failing_experiment_reports_and_re_enables_the_button(monkeypatch, shown):
    monkeypatch.setenv("WORKBOOK_STATIC", "0")

    def broken(n):
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged"):  # outside a kernel nothing swallows it
        widgets.explore(broken, n=widgets.int_slider(1, 0, 3))


def test_static_detection(monkeypatch):
    import IPython

    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("VSCODE_PID", raising=False)
    for flag, static in (("1", True), ("true", True), ("0", False), ("false", False)):
        monkeypatch.setenv("WORKBOOK_STATIC", flag)
        assert widgets.is_static() is static
    monkeypatch.delenv("WORKBOOK_STATIC")
    assert widgets.is_static()  # no IPython kernel here (pytest)

    class Kernel:
        kernel = object()

    monkeypatch.setattr(IPython, "get_ipython", lambda: Kernel())
    assert widgets.is_static()  # a kernel without a Jupyter server: papermill, nbclient, nbval
    monkeypatch.setenv("JPY_SESSION_NAME", "/lab/03_finetune_cnn.ipynb")
    assert not widgets.is_static()  # JupyterLab started this kernel


def test_bad_controls_are_explained():
    with pytest.raises(ValueError, match="outside"):
        widgets.int_slider(0, 1, 5)
    with pytest.raises(ValueError, match="0 < min"):
        widgets.log_slider(1e-3, 0.0, 1.0)
    with pytest.raises(ValueError, match="not one of"):
        widgets.choice(["a", "b"], value="c")
    assert widgets.choice([("scratch", 0), ("fine-tune", 1)]).value == 0
    with pytest.raises(ValueError, match="at least one control"):
        widgets.explore(lambda: None)
    with pytest.raises(TypeError, match="no .value"):
        widgets.explore(lambda lr: None, lr=1e-3)


def test_under_papermill_it_falls_back_to_a_static_figure(tmp_path, monkeypatch):
    """A real kernel started by papermill (no Jupyter server): the static PNG, no widget."""
    import nbformat
    import papermill as pm
    from nbformat.v4 import new_code_cell, new_notebook

    monkeypatch.delenv("WORKBOOK_STATIC", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    nb = new_notebook(cells=[new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "from helpers.widgets import explore, int_slider\n"
        "def curve(n):\n"
        "    fig, ax = plt.subplots()\n"
        "    ax.plot(range(n))\n"
        "    return fig\n"
        "state = explore(curve, n=int_slider(4, 1, 9))\n"
        "assert state.static and state.runs == 1 and state.values == {'n': 4}\n"
        "state")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "w.ipynb")
    pm.execute_notebook(str(tmp_path / "w.ipynb"), str(tmp_path / "out.ipynb"),
                        kernel_name="python3", progress_bar=False)
    outputs = json.loads((tmp_path / "out.ipynb").read_text())["cells"][0]["outputs"]
    kinds = [key for o in outputs for key in o.get("data", {})]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "static run with n=4" in text
    assert kinds.count("image/png") == 1  # shown once: not again by the inline backend
    assert "application/vnd.jupyter.widget-view+json" not in kinds
    assert Path(tmp_path / "out.ipynb").stat().st_size < 200_000
