"""The MLflow "models from code" entry of the lungseg model: MLflow runs this file when it loads the
model (after putting the model's ``code/`` folder on ``sys.path``), so nothing is unpickled.
See :mod:`lungseg.artifacts.pyfunc`."""

import mlflow.models

from lungseg.artifacts.pyfunc import LungsegModel

mlflow.models.set_model(LungsegModel())
