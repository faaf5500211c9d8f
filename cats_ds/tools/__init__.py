"""Research and operations tools built on the training core: studies and sweeps, the mechanism
benchmark, throughput and memory estimates, curvature, plots and launch checks. The core never
imports from here (tests/test_layout.py)."""
