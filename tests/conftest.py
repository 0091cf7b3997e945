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
    # The end-to-end runs (marked slow) first, so that no long run starts last and sets the suite's end. Under `-n 2`
    # pytest-xdist's `load` hands the first worker a first block holding all three, run one after the other, while the
    # other worker takes the short tests; `--maxschedchunk 1` (one per worker) measured no faster (10:19 vs 10:16).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
