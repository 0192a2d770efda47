"""Benchmark harness for ses-relay: ``python -m bench.run [--quick] [--out docs/benchmarks.md]``.

Everything here runs the relay, its baselines, the fake SES and the load generators as separate
processes, so that on a small machine the measured process does not share its interpreter with the
load it is measured under. See docs/benchmarks.md for the method and the latest results.
"""
