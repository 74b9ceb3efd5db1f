"""FLix, featurized low-rank mixtures (METHODS.md §3), as a peft method named ``flix``.

Importing this package registers the method with peft (``PeftType.FLIX``), after which ``get_peft_model``,
``save_pretrained`` and ``PeftModel.from_pretrained`` handle it like a built-in method. See
:mod:`components.adapters.flix.model` for a usage example and :mod:`components.adapters.flix.features` for how
each example's features reach the layers; run its tests with ``.venv/bin/pytest tests/unit/adapters/test_flix.py``
and its benchmark with ``.venv/bin/python benchmarks/flix.py --quick``.
"""

from components.adapters.flix.config import FLixConfig
from components.adapters.flix.features import (
    FEATURES_KWARG,
    FeatureBatch,
    FeaturesMissingError,
    FeatureSpec,
    feature_vocabulary,
    use_features,
)
from components.adapters.flix.layer import FLixLayer, Linear, MergeNotSupportedError
from components.adapters.flix.model import FLixModel
from components.adapters.peft_ext import register_method

__all__ = [
    "FEATURES_KWARG",
    "FLixConfig",
    "FLixLayer",
    "FLixModel",
    "FeatureBatch",
    "FeatureSpec",
    "FeaturesMissingError",
    "Linear",
    "MergeNotSupportedError",
    "feature_vocabulary",
    "use_features",
]

register_method(name="flix", config_cls=FLixConfig, model_cls=FLixModel)
