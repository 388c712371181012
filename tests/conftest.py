"""Fixtures shared by the test files. Helpers that are not fixtures (the tiny recipe, a free port,
the environment of a subprocess) are in tests/support.py; tests/nosync.py forbids host syncs."""
import pytest

from support import small_demo


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The small demo data set (OUT/train, OUT/eval), generated once per test session."""
    return small_demo(tmp_path_factory)
