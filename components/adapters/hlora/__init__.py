"""H-LoRA, HealthGPT's heterogeneous LoRA (METHODS.md §1), as a peft method named ``hlora``.

Importing this package registers the method with peft (``PeftType.HLORA``), after which ``get_peft_model``,
``save_pretrained`` and ``PeftModel.from_pretrained`` handle it like a built-in method. See
:mod:`components.adapters.hlora.model` for a usage example; run its tests with
``.venv/bin/pytest tests/unit/adapters``.
"""

from components.adapters.hlora.config import HLoraConfig
from components.adapters.hlora.layer import HLoraLayer, Linear, MergeNotSupportedError
from components.adapters.hlora.model import HLoraModel
from components.adapters.peft_ext import register_method

__all__ = ["HLoraConfig", "HLoraLayer", "HLoraModel", "Linear", "MergeNotSupportedError"]

register_method(name="hlora", config_cls=HLoraConfig, model_cls=HLoraModel)
