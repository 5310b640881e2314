"""rpcgen benchmarks: ``python -m benchmarks [--quick] [--json PATH]``.

Every comparison runs in the same process run, and results are reported as
ratios to a baseline measured in that run, because these machines are noisy.
Timings are never asserted anywhere; CI only runs ``--quick`` to keep this working.
"""
