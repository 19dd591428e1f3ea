"""Scoring: from cached tensors and learned prompts to scores, metrics, reports and decisions.

``pad score`` (:mod:`scoring.score`) and the per-sample maths every scoring command shares
(:mod:`scoring.sample_score`), the metrics (:mod:`scoring.metrics`), the results directory
(:mod:`scoring.results`) and its report (:mod:`scoring.report`, :mod:`scoring.score_report`);
decisions: ``pad calibrate`` (:mod:`scoring.calibrate`) writes a calibration
(:mod:`scoring.calibration`) from which every scoring command gets conformal p-values and verdicts
(:mod:`scoring.conformal`) and defect regions (:mod:`scoring.regions`).

Imports run one way: ``scoring`` may import ``trainer`` (the model, the kNN helpers) and
``data_cache``; ``trainer`` never imports ``scoring``; ``workflows`` may import everything.
"""
