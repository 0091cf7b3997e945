"""Suite-wide defaults: one OpenMP thread per process, tracking off unless a test turns it on (never the
repository's own MLflow store), and the end-to-end runs first, in the order that keeps both workers busy."""
import os

import pytest

# One OpenMP (torch) thread in each test process and in every command a test starts, unless the test says
# otherwise: `-n 2` already runs two tests at once on two cores, and 2-thread pools on top of that wait for each
# other's cores (`pytest -n 2 -m repeated_runs`: 2 min 41 s and 5 min 7 s of CPU, against 3 min 2 s and 5 min 49 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_tracking(tmp_path_factory):
    # Tests that check MLflow set PIPELINE_TRACKING=1 and their own MLFLOW_TRACKING_URI explicitly.
    os.environ.setdefault("PIPELINE_TRACKING", "0")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    yield


# The end-to-end runs in the order `-n 2` should start them. pyproject's `--dist loadgroup` hands each worker one
# test at a time in this order, so the SLURM run (mostly waiting on its scheduler's polls) starts beside the
# smoke DAG (both cores busy) instead of after it; the DVC flow follows on the first free worker.
# tests/test_suite_order.py fails if a prefix stops naming a test (a renamed test would lose its place silently).
E2E_ORDER = ("test_smoke_dag_through_a_one_node_slurm_cluster", "test_snakemake_smoke_builds_the_dag",
             "test_dvc_records_snakemake_outputs")


def _start_rank(item) -> tuple[int, int]:
    if item.get_closest_marker("slow") is not None:
        named = [i for i, prefix in enumerate(E2E_ORDER) if item.name.startswith(prefix)]
        return (0, named[0] if named else len(E2E_ORDER))
    # then the runs that start stage commands many times over, so that the suite ends on short tests
    return (1, 0) if item.get_closest_marker("repeated_runs") is not None else (2, 0)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_start_rank)  # stable: file order within each rank
