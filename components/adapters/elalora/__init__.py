"""ElaLoRA, elastic-rank LoRA (METHODS.md §2), as a peft method named ``elalora``, with its rank allocator.

Importing this package registers the method with peft (``PeftType.ELALORA``). The layers hold ``r_max`` rank slots
and an active mask (:mod:`~components.adapters.elalora.layer`); :class:`RankAllocator` scores ranks and moves them
between matrices during training (:mod:`~components.adapters.elalora.allocator`); :func:`rank_pattern` reads the
result and :func:`pattern_for_kind` turns it into another method's ranks (:mod:`~components.adapters.elalora.pattern`).
See :mod:`components.adapters.elalora.model` for a usage example; tests: ``.venv/bin/pytest tests/unit/adapters``.
"""

from components.adapters.elalora.allocator import RankAllocator, reallocation_budget
from components.adapters.elalora.config import ElaLoraConfig
from components.adapters.elalora.layer import ElaLoraLayer, Linear
from components.adapters.elalora.model import ElaLoraModel
from components.adapters.elalora.pattern import pattern_for_kind, rank_pattern
from components.adapters.peft_ext import register_method

__all__ = [
    "ElaLoraConfig",
    "ElaLoraLayer",
    "ElaLoraModel",
    "Linear",
    "RankAllocator",
    "pattern_for_kind",
    "rank_pattern",
    "reallocation_budget",
]

register_method(name="elalora", config_cls=ElaLoraConfig, model_cls=ElaLoraModel)
