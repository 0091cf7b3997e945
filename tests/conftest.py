"""Suite-wide defaults: tracking off unless a test turns it on, and never the repository's own MLflow store."""
import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_tracking(tmp_path_factory):
    # Tests that check MLflow set PIPELINE_TRACKING=1 and their own MLFLOW_TRACKING_URI explicitly.
    os.environ.setdefault("PIPELINE_TRACKING", "0")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    yield
