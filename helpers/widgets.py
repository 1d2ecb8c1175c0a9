"""Make a small experiment interactive: sliders and dropdowns, a Run button, the figure redrawn.

A notebook states its experiment as a function of a few knobs that returns a figure, and hands it
to :func:`explore` with one control per knob::

    def budget_curve(labels_per_class, lr, method):
        ...                                  # a small, fast experiment
        return fig                           # a matplotlib figure (or anything displayable)

    explore(budget_curve,
            labels_per_class=int_slider(10, 1, 50, description="labels/class"),
            lr=log_slider(1e-3, 1e-4, 1e-1),
            method=choice(["linear probe", "full fine-tuning"]))

In JupyterLab this shows the controls, a **Run** button and the figure for the current values
(drawn once at the start); moving a slider and pressing Run reruns the experiment and redraws.
Nothing reruns on every slider move: a training run takes seconds, not milliseconds.

In batch (papermill, the runner, the tests, nbval) nobody can move a slider, so :func:`explore`
falls back to one static run with the controls' current values and shows that figure as a plain
PNG, which any notebook viewer displays. It is static when

* ``$WORKBOOK_STATIC`` is ``1``/``true`` (``python -m helpers.run`` sets it for its kernels;
  ``0``/``false`` forces the interactive version), else
* there is no IPython kernel or no ``ipywidgets``, else
* the kernel was not started by a Jupyter server (JupyterLab and Notebook 7 set
  ``$JPY_SESSION_NAME`` for their kernels; papermill and nbclient do not), VS Code or Colab.
"""

from __future__ import annotations

import io
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

STATIC_ENV = "WORKBOOK_STATIC"
_STYLE = {"description_width": "initial"}


# --------------------------------------------------------------------------------------------
# controls (small factories so a notebook cell stays one line per knob)
# --------------------------------------------------------------------------------------------

def int_slider(value: int, min: int, max: int, step: int = 1, description: str | None = None) -> Any:
    """An integer slider, e.g. a label budget: ``int_slider(10, 1, 50, description="labels/class")``."""
    import ipywidgets as w

    if not min <= value <= max:
        raise ValueError(f"int_slider: value {value} is outside [{min}, {max}]")
    return w.IntSlider(value=value, min=min, max=max, step=step, description=description or "",
                       continuous_update=False, style=_STYLE)


def log_slider(value: float, min: float, max: float, steps_per_decade: int = 4,
               description: str | None = None) -> Any:
    """A slider on a log scale, e.g. a learning rate: ``log_slider(1e-3, 1e-5, 1e-1)``.

    ``min`` and ``max`` are values (not exponents); the slider moves in ``steps_per_decade`` steps
    per factor of ten.
    """
    import ipywidgets as w

    if not 0 < min <= value <= max:
        raise ValueError(f"log_slider: need 0 < min <= value <= max, got {min}, {value}, {max}")
    return w.FloatLogSlider(value=value, base=10, min=math.log10(min), max=math.log10(max),
                            step=1 / steps_per_decade, description=description or "",
                            readout_format=".1e", continuous_update=False, style=_STYLE)


def float_slider(value: float, min: float, max: float, step: float = 0.1,
                 description: str | None = None) -> Any:
    """A slider on a linear scale, e.g. a dropout rate: ``float_slider(0.1, 0.0, 0.5, 0.05)``."""
    import ipywidgets as w

    if not min <= value <= max:
        raise ValueError(f"float_slider: value {value} is outside [{min}, {max}]")
    return w.FloatSlider(value=value, min=min, max=max, step=step, description=description or "",
                         continuous_update=False, style=_STYLE)


def choice(options: Sequence[Any], value: Any = None, description: str | None = None) -> Any:
    """A dropdown, e.g. a method: ``choice(["scratch", "linear probe", "full"], value="full")``.

    ``options`` may also be ``(label, value)`` pairs; ``value`` defaults to the first option.
    """
    import ipywidgets as w

    options = list(options)
    if not options:
        raise ValueError("choice: needs at least one option")
    values = [o[1] if isinstance(o, tuple) and len(o) == 2 else o for o in options]
    if value is None:
        value = values[0]
    elif value not in values:
        raise ValueError(f"choice: value {value!r} is not one of {values}")
    return w.Dropdown(options=options, value=value, description=description or "", style=_STYLE)


# --------------------------------------------------------------------------------------------
# where are we running?
# --------------------------------------------------------------------------------------------

def is_static() -> bool:
    """True when nobody can interact with widgets here (see the module docstring for the rules)."""
    flag = os.environ.get(STATIC_ENV, "").strip().lower()
    if flag in ("1", "true", "yes"):
        return True
    if flag in ("0", "false", "no"):
        return False
    try:
        from IPython import get_ipython
        import ipywidgets  # noqa: F401
    except ImportError:
        return True
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:  # plain python or terminal IPython
        return True
    live = ("JPY_SESSION_NAME" in os.environ or "VSCODE_PID" in os.environ
            or "google.colab" in sys.modules)
    return not live


# --------------------------------------------------------------------------------------------
# explore
# --------------------------------------------------------------------------------------------

def show(result: Any) -> None:
    """Display what an experiment returned: a matplotlib figure as a PNG (then closed, so the
    inline backend does not draw it twice), ``None`` as nothing, anything else as itself."""
    from IPython.display import Image, display

    if result is None:
        return
    if hasattr(result, "savefig"):
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        result.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(result)
        display(Image(data=buffer.getvalue(), format="png"))
    else:
        display(result)


@dataclass
class Exploration:
    """What :func:`explore` made: the controls, the last values and result, how many runs."""

    controls: dict[str, Any]
    static: bool
    values: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    runs: int = 0
    widget: Any = None  # the VBox shown in a live notebook (None when static)
    button: Any = None  # its Run button

    def current_values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.controls.items()}

    def _ipython_display_(self) -> None:
        """Already displayed by :func:`explore`; as a cell's last value it adds nothing."""


def explore(run_fn: Callable[..., Any], *, title: str | None = None, run_now: bool = True,
            **controls: Any) -> Exploration:
    """Show ``controls`` with a Run button that calls ``run_fn(**values)`` and shows its figure.

    ``controls`` maps each keyword argument of ``run_fn`` to a widget with a ``.value`` (use
    :func:`int_slider`, :func:`log_slider`, :func:`float_slider`, :func:`choice`, or any
    ipywidgets control). With ``run_now`` the experiment runs once at once with the initial values.
    Where widgets cannot be used (:func:`is_static`) it runs once with the current values and shows
    the figure as a plain image. Returns an :class:`Exploration` (values, result, run count).
    """
    from IPython.display import display

    if not controls:
        raise ValueError("explore: give at least one control, e.g. lr=log_slider(1e-3, 1e-5, 1e-1)")
    missing = [name for name, control in controls.items() if not hasattr(control, "value")]
    if missing:
        raise TypeError(f"explore: controls {missing} have no .value; pass ipywidgets controls "
                        f"such as int_slider(...), log_slider(...) or choice([...])")
    state = Exploration(controls=dict(controls), static=is_static())

    def run_once() -> Any:
        state.values = state.current_values()
        state.result = run_fn(**state.values)
        state.runs += 1
        return state.result

    if state.static:
        shown = ", ".join(f"{name}={value!r}" for name, value in state.current_values().items())
        print(f"{title + ': ' if title else ''}static run with {shown} "
              f"(interactive controls need a live Jupyter frontend)")
        show(run_once())
        return state

    import ipywidgets as w

    button = w.Button(description="Run", button_style="primary", icon="play",
                      tooltip="rerun the experiment with these values")
    status = w.HTML()
    output = w.Output()

    def on_click(_: Any = None) -> None:
        button.disabled, status.value = True, "<i>running ...</i>"
        output.clear_output(wait=True)
        failed: Exception | None = None
        try:
            with output:  # in a kernel the Output widget shows the traceback and swallows it
                try:
                    show(run_once())
                except Exception as err:
                    failed = err
                    raise
        finally:
            button.disabled = False
            status.value = (f"<b style='color:#c62828'>{type(failed).__name__}: {failed}</b>"
                            if failed else f"<span style='color:#666'>run {state.runs} done</span>")

    button.on_click(on_click)
    state.button = button
    header = [w.HTML(f"<b>{title}</b>")] if title else []
    state.widget = w.VBox([*header, *controls.values(), w.HBox([button, status]), output])
    display(state.widget)
    if run_now:
        on_click()
    return state
