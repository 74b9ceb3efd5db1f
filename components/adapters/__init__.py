"""Parameter-efficient adapters for medtune's models, by short name (see :mod:`components.adapters.registry`).

Each method lives in its own folder (``hlora/`` ...) in peft's layout and registers itself with peft on import,
so ``save_pretrained``/``PeftModel.from_pretrained`` handle it; ``lora`` is peft's own. Tests:
``.venv/bin/pytest tests/unit/adapters``; speed: ``.venv/bin/python benchmarks/hlora.py``.
"""

from components.adapters.registry import (
    ADAPTER_KINDS,
    AdapterKind,
    adapter_kind,
    add_adapter,
    apply_adapter,
    build_adapter_config,
)

__all__ = ["ADAPTER_KINDS", "AdapterKind", "adapter_kind", "add_adapter", "apply_adapter", "build_adapter_config"]
