"""The learning recipe: one place for everything that decides what the model learns and how it scores.

The model (``model``), its input vocabulary (``examples``: slots, feature IDs, tower inputs), how
labelled examples are made (``joiner``, ``negatives``), the losses and update schedule
(``trainer``), the training step a worker runs per micro-batch (``training``) and read-only scoring
(``trainer.Scorer``, ``trainer.pull_rows``). The stream worker feeds it from Kafka, ``rtrec eval``
feeds it from a file, serving uses its towers and head: nothing trains or scores the model a second
way, so an evaluation figure is a figure of the deployed system.
"""
