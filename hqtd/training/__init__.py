"""The parts that :mod:`hqtd.train`'s loop composes: :mod:`~hqtd.training.streams` (reproducible
random streams), :mod:`~hqtd.training.run_dir` (what a run directory holds and who works in it),
:mod:`~hqtd.training.run_log` (what rank 0 writes as it trains), :mod:`~hqtd.training.schedule`
(iterations, epoch, SGD and poly learning rate) and :mod:`~hqtd.training.stage` (the stage's data
and initial network)."""
