"""The experiment: a run's parameters and records, its steps, the analysis, the chain runner.

Modules, from the bottom up:

* :mod:`~steerlib.experiment.config`, :mod:`~steerlib.experiment.config_files` — a run's
  parameters (validated once) and the YAML files and ``--set`` overrides that give them;
* :mod:`~steerlib.experiment.runs` — a run's folder (:mod:`~steerlib.experiment.run_files`:
  paths, step states) and its lock (:mod:`~steerlib.experiment.locks`);
* :mod:`~steerlib.experiment.table` — the declared step table (reads, products, extensions);
* :mod:`~steerlib.experiment.run` — :class:`~steerlib.experiment.run.Run`: opening a run, the
  rules for changed parameters, provenance, the shared model and scorer;
* :mod:`~steerlib.experiment.steps` — steps 01-04;
* :mod:`~steerlib.experiment.sweep` — step 05: what it covers (:mod:`~steerlib.experiment.plan`),
  its unit files (:mod:`~steerlib.experiment.unit_files`), the variant sweeps and their units
  (:mod:`~steerlib.experiment.families`), the alpha search
  (:mod:`~steerlib.experiment.alpha_search`) and the KL pass (:mod:`~steerlib.experiment.kl_pass`);
* :mod:`~steerlib.experiment.analysis` — step 06;
* :mod:`~steerlib.experiment.preflight` — every input checked before a step starts, and an
  existing run's files (:mod:`~steerlib.experiment.run_checks`);
* :mod:`~steerlib.experiment.chain` — the papermill runner and ``python -m steerlib run``.

Nothing is imported here, so that the step table stays cheap to import;
:mod:`steerlib.pipeline` gathers the public names in one place.
"""
