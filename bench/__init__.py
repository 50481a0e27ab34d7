"""Benchmarks: scripts that start the local stack and print each figure as a ratio against a floor
measured in the same run. `python -m bench.run_all` runs them all and writes bench/RESULTS.md.
Never imported by `functions/` and never run by the test suite.
"""
