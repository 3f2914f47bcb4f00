"""Applications (top floor): the command line, the alpha explorer, bench, doctor, status.

* :mod:`~steerlib.apps.cli` — ``python -m steerlib COMMAND``;
* :mod:`~steerlib.apps.widgets` — the alpha explorer of notebook 07 (its model side in
  ``explorer_session``, opening a run in ``explorer_run``, its controls and HTML in
  ``explorer_controls`` and ``explorer_page``);
* :mod:`~steerlib.apps.bench`, :mod:`~steerlib.apps.doctor`, :mod:`~steerlib.apps.status`,
  :mod:`~steerlib.apps.export`, :mod:`~steerlib.apps.prepare` — the other commands;
* :mod:`~steerlib.apps.control_vectors` — llama.cpp and repeng control-vector files, out and in.
"""
