"""Generation (floor 4): the sweep engine and the plain reference generator.

* :mod:`~steerlib.generate.generation` — prompt formats, ``generate_completions``;
* :mod:`~steerlib.generate.engine` — the batched sweep engine (per-row alpha, shared prefill);
* :mod:`~steerlib.generate.sampling`, :mod:`~steerlib.generate.kvcache` — its sampler and cache;
* :mod:`~steerlib.generate.sizing`, :mod:`~steerlib.generate.partition` — batch sizes, work units.
"""
