"""Benchmarks (SPEC §11): ``python -m bench.run``. Not tests; pytest never collects them."""
