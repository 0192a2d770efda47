"""Test and benchmark support for ses-relay: fakes, clients, waiting and port helpers.

Not shipped: pyproject's package discovery includes only `relay*`. Tests and `bench/` import from here;
nothing imports from `tests/` (and nothing from `tests/conftest.py`).
"""
