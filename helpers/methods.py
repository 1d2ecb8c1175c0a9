"""What is left of the old methods module (to be deleted): language-model specialisation is now in
:mod:`helpers.text` (``specialise_lm``, ``lora_lm``).

The vision fine-tuning strategies are :mod:`helpers.finetuning`; the forgetting mitigations are
:mod:`helpers.forgetting`.
"""

from __future__ import annotations

from .finetuning import epochs_for  # noqa: F401 -- text.finetune imports it from here until it moves
