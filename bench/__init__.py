"""Performance suite: every figure is a ratio of two ways of doing the same work, timed side by
side in one run. ``python -m bench [--quick]`` runs all scripts and prints one summary table;
each script also runs alone (``python -m bench.contrastive --help``)."""
