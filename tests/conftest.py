"""Suite-wide defaults: tracking off unless a test turns it on, and never the repository's own MLflow store."""
import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_tracking(tmp_path_factory):
    # Tests that check MLflow set PIPELINE_TRACKING=1 and their own MLFLOW_TRACKING_URI explicitly.
    os.environ.setdefault("PIPELINE_TRACKING", "0")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    yield


def pytest_collection_modifyitems(config, items):
    # The end-to-end runs (marked slow) first: under `-n 2` (make test) each starts at once on a worker while the
    # other worker takes the short tests, instead of two of them meeting at the end.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
