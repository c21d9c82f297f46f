"""Prequential evaluation (``rtrec eval``): replay a logged stream, rank before learning, report.

The data flow reads top to bottom: :mod:`evaluation.stream` (events to arrays) →
:mod:`evaluation.batches` (what a ranker sees) → the rankers (:mod:`evaluation.baselines`,
:mod:`evaluation.towers`) → :mod:`evaluation.runner` (rank, log, learn) →
:mod:`evaluation.metrics` → :mod:`evaluation.report`; :mod:`evaluation.cli` wires it to the CLI.
"""
