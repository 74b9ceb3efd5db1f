"""The code MLflow logs as the pyfunc model ("models from code"): it builds the model object when MLflow loads it.

MLflow executes this file (a copy kept in the logged model) on ``mlflow.pyfunc.load_model``; it is never imported
by medtune itself. Logged with ``python_model=<this file's path>`` by :func:`components.tracking.registry.log_model`,
so the model holds no pickle (see :mod:`components.tracking.pyfunc_model`).
"""

from mlflow.models import set_model

from components.tracking.pyfunc_model import MedtuneVLMModel

set_model(MedtuneVLMModel())
