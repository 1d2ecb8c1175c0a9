"""One name per idea: every error that says "parameter 'X'" names a knob a learner can set.

A notebook's parameters are the config knobs (``config.KNOBS``), so an error naming a parameter
must name one of them: the reader looks that name up in the parameters cell or passes it in
``OVERRIDES``. A function argument that is not a knob is named as ``function: argument=...``
instead (e.g. ``label_budget: per_class=0 is not allowed``).
"""

import json
import re
from pathlib import Path

import pytest
import torch

from helpers import config, continual, finetuning, forgetting, imbalance, transfer, vision
from helpers.config import KNOBS
from helpers.models import SmallResNet

ROOT = Path(__file__).resolve().parent.parent

# What names a knob in the sources: an error message, a check of a knob, a ``knob=`` default.
NAMING = [re.compile(p) for p in (
    r"parameter '(\w+)'",
    r"\bcheck_knob\(\s*\"(\w+)\"",
    r"\bcheck_budgets\(\s*\"(\w+)\"",
    r"\b\w*knob: str = \"(\w+)\"",
    r"\b\w*knob=\"(\w+)\"",
)]


def _named(lines, where):
    for number, line in enumerate(lines, 1):
        for pattern in NAMING:
            for name in pattern.findall(line):
                yield where, number, name, line.strip()


def _helpers_sources():
    for path in sorted((ROOT / "helpers").rglob("*.py")):
        yield from _named(path.read_text(encoding="utf-8").splitlines(), path.relative_to(ROOT).as_posix())


def _notebook_sources():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        lines = [line for cell in cells if cell["cell_type"] == "code" for line in "".join(cell["source"]).splitlines()]
        yield from _named(lines, path.name)


def test_the_scan_finds_the_checks():
    found = {name for *_, name, _ in _helpers_sources()}
    assert {"methods", "forgetting_methods", "stream_methods", "imbalance_methods", "harmful_source",
            "budgets", "transfer_budgets", "shift_budget", "shift_extra", "replay_fraction"} <= found


def test_every_parameter_named_in_helpers_and_notebooks_is_a_knob():
    unknown = [f"{where}:{number}: {name!r} in {line}"
               for where, number, name, line in [*_helpers_sources(), *_notebook_sources()]
               if name not in KNOBS]
    assert not unknown, "errors or checks name parameters that are not knobs:\n" + "\n".join(unknown)


def _named_in_error(call):
    with pytest.raises(ValueError) as error:
        call()
    match = re.search(r"parameter '(\w+)'", str(error.value))
    assert match, f"the error does not name a parameter: {error.value}"
    return match.group(1)


def _toy_task(per_class=6):
    labels = torch.arange(3).repeat(per_class)
    split = (torch.rand(len(labels), 1, 28, 28), labels)
    return vision.TargetTask("toy", split, split, split, split, 3)


def test_bad_values_raise_errors_that_name_the_right_knob():
    task, model = _toy_task(), SmallResNet(3, width=4, stages=1)
    toy = _toy_task().pool
    common = dict(lr=1e-3, batch_size=4, width=4, bf16=False, progress=False)
    calls = {
        "methods": lambda: finetuning.finetune("fine_tune", model, toy, num_classes=3, steps=1, lr=1e-3,
                                               batch_size=4, seed=0),
        "forgetting_methods": lambda: forgetting.mitigation("ewk", model, model, lr=1e-3, weight_decay=0.0,
                                                            batch_size=4, seed=0),
        "stream_methods": lambda: continual.learn_sequence("ewk", model, [toy], [toy], num_classes=3, steps=1,
                                                            lr=1e-3, batch_size=4, seed=0),
        "replay_fraction": lambda: forgetting.replay_memory(toy, 0.0),
        "imbalance_methods": lambda: imbalance.rebalanced_data("smote", *toy, seed=0),
        "imbalance_max_per_class": lambda: imbalance.long_tailed(toy[1], 7, 2.0, seed=0),
        "harmful_source": lambda: transfer.harmful_source("textures", 3, 1, 1, 0),
        "budgets": lambda: vision.finetune_grid(task, None, [("scratch", 7)], [0], steps=1, **common),
        "compare_budget": lambda: vision.finetune_grid(task, None, [("scratch", 7)], [0], steps=1,
                                                       knob="compare_budget", **common),
        "transfer_budgets": lambda: transfer.transfer_grid(task, {"scratch": None}, [("scratch", 7)], [0],
                                                           min_steps=1, epochs=1, **common),
        "shift_budget": lambda: transfer.shift_recovery(task, model, 7, [], [0.0], [0], steps=1, **common),
        "shift_extra": lambda: transfer.shift_recovery(task, model, 2, [5], [0.0], [0], steps=1, **common),
        "finetune_steps": lambda: config.check_knob("finetune_steps", 0),
    }
    for knob, call in calls.items():
        assert _named_in_error(call) == knob
        assert knob in KNOBS
