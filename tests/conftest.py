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
    # The end-to-end runs (marked slow) first: under `-n 2` (make test) they start at once, one per worker, and the
    # short tests fill in behind them, rather than a long run starting last and setting the suite's end.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
