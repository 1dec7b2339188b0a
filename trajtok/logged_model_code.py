"""The code MLflow runs to load a logged trajtok model (models from code: nothing is pickled)."""

import mlflow

from trajtok.logged_model import TrajTokModel

mlflow.models.set_model(TrajTokModel())
