"""The suite's start order (tests/conftest.py) names the end-to-end tests by prefix. A renamed test would
silently fall to the end of the slow rank and the suite would run longer, so each prefix must still name exactly
one slow test function."""
import ast
from pathlib import Path

from tests.conftest import E2E_ORDER

TESTS = Path(__file__).parent


def _marks_slow(node) -> bool:
    return "mark.slow" in ast.unparse(node)


def _is_module_slow_mark(node) -> bool:
    return (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
            and _marks_slow(node.value))


def _slow_test_functions() -> list[str]:
    """Names of the test functions marked slow, by their own decorator or by their module's `pytestmark`."""
    names = []
    for path in TESTS.rglob("test_*.py"):
        body = ast.parse(path.read_text()).body
        module_slow = any(_is_module_slow_mark(node) for node in body)
        for node in body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and (
                    module_slow or any(_marks_slow(d) for d in node.decorator_list)):
                names.append(node.name)
    return names


def test_each_start_order_prefix_names_exactly_one_slow_test():
    slow = _slow_test_functions()
    assert slow, "no slow test found: the marker's spelling changed?"
    for prefix in E2E_ORDER:
        matches = [name for name in slow if name.startswith(prefix)]
        assert len(matches) == 1, f"E2E_ORDER prefix {prefix!r} matches {matches}; update tests/conftest.py"
