"""Applications (top floor): the command line, the alpha explorer, bench, doctor, status.

* :mod:`~steerlib.apps.cli` — ``python -m steerlib COMMAND``;
* :mod:`~steerlib.apps.widgets` — the alpha explorer of notebook 07;
* :mod:`~steerlib.apps.bench`, :mod:`~steerlib.apps.doctor`, :mod:`~steerlib.apps.status`,
  :mod:`~steerlib.apps.export`, :mod:`~steerlib.apps.prepare` — the other commands;
* :mod:`~steerlib.apps.control_vectors` — llama.cpp and repeng control-vector files, out and in.
"""
