"""The engine: the block walk and everything it owns (statistics, QEP, checkpoints, results).

:class:`~onecomp_core.engine.walk.Engine` runs one method over the selected
layers of a model; the seed-compatible ``Runner`` (:mod:`onecomp_core.seed_api`)
loads the model and calibration data and hands them to it.
"""
