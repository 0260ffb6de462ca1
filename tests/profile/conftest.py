"""Profiler tests run single-threaded: on a shared, loaded CPU two threads are far slower.

Each module opts in to the shared ``single_thread`` fixture (tests/conftest.py) with
``pytestmark = pytest.mark.usefixtures("single_thread")``.
"""
