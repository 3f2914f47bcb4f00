"""Evaluation (floor 5): scorers, fluency, metrics, controls and the operating point.

* :mod:`~steerlib.evaluate.scoring` (the registry, ``SCORERS`` and ``SCORER_CHECKS``),
  :mod:`~steerlib.evaluate.texts`, :mod:`~steerlib.evaluate.embedding_scorer`,
  :mod:`~steerlib.evaluate.scorer_training` — toxicity scorers (word model, MiniLM head);
* :mod:`~steerlib.evaluate.fluency` — perplexity of continuations (the front of
  :mod:`~steerlib.evaluate.benign`, the held-out perplexity and KL passes, and
  :mod:`~steerlib.evaluate.repetition`);
* :mod:`~steerlib.evaluate.metrics` — EMT, toxic fraction, intervals (the front of
  :mod:`~steerlib.evaluate.contract`, :mod:`~steerlib.evaluate.toxicity`,
  :mod:`~steerlib.evaluate.diversity`, :mod:`~steerlib.evaluate.bootstrap` and
  :mod:`~steerlib.evaluate.summary`);
* :mod:`~steerlib.evaluate.controls` — matched random controls;
* :mod:`~steerlib.evaluate.gates` — the measures that gate admissibility, declared once;
* :mod:`~steerlib.evaluate.admissibility`, :mod:`~steerlib.evaluate.operating_point` (with
  :mod:`~steerlib.evaluate.point_figures` and :mod:`~steerlib.evaluate.point_table`),
  :mod:`~steerlib.evaluate.search` — the fluency budget, select/confirm, the alpha search.
"""
