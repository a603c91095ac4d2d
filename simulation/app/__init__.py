"""The ``resetfree-sim`` application: the learner and the runtime as two processes around the
simulated robot, the run directory, live evaluation, plots, the BC baseline, and the in-process
practice loop (the same algorithm in one process, for benchmarks and diagnostics)."""
