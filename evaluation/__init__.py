"""Prequential evaluation (``rtrec eval``) of the deployed system: replay a logged stream, ask, then learn.

The data flow reads top to bottom: :mod:`evaluation.stream` (events in time order, and the
positive events as arrays for the baselines) → :mod:`evaluation.batches` (the worker's
micro-batches) → :mod:`evaluation.system` (the worker pipeline and serving instances over an
in-process parameter store and an embedded Redis) and :mod:`evaluation.baselines` →
:mod:`evaluation.runner` (ask, log, learn) → :mod:`evaluation.metrics` and
:mod:`evaluation.labelled` → :mod:`evaluation.report`; :mod:`evaluation.cli` wires it to the CLI.
"""
