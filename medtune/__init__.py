"""``import medtune``: registers medtune's adapter methods with peft, so that plain peft loads what medtune exports.

    import medtune  # noqa: F401  (H-LoRA, FLix, ElaLoRA become peft methods)
    from peft import PeftModel
    model = PeftModel.from_pretrained(base, "export/comprehension")   # `medtune export ... --format peft`

peft's own LoRA needs no import. The methods live in :mod:`components.adapters` (one folder per method, each ending in
one registration line, as peft's tuners do); this package only imports them, which is what registers them. Exports:
``medtune export`` (README, "Export"); tests: ``.venv/bin/pytest tests/unit/training/test_export.py``.
"""

from components.adapters.elalora import ElaLoraConfig
from components.adapters.flix import FLixConfig, use_features
from components.adapters.hlora import HLoraConfig

__all__ = ["ElaLoraConfig", "FLixConfig", "HLoraConfig", "use_features"]
