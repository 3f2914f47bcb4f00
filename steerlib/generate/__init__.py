"""Generation (floor 4): the sweep engine and the plain reference generator.

* :mod:`~steerlib.generate.settings` — ``DecodingSettings``, passed whole to every path;
* :mod:`~steerlib.generate.tokens` — prompt formats, left padding, the one pad id, stop ids;
* :mod:`~steerlib.generate.reference` — the plain, slow reference generator (any variant);
* :mod:`~steerlib.generate.generation` — ``generate_completions`` (on the reference generator);
* :mod:`~steerlib.generate.engine` — the batched sweep engine: units, sweeps;
* :mod:`~steerlib.generate.decode`, :mod:`~steerlib.generate.loops` — one batch: prefill, the
  synced and the sync-free decode loops;
* :mod:`~steerlib.generate.sampling`, :mod:`~steerlib.generate.kvcache` — its sampler and cache;
* :mod:`~steerlib.generate.sizing`, :mod:`~steerlib.generate.partition` — batch sizes, work units;
  :mod:`~steerlib.generate.unit_rows` — a unit's table.
"""
