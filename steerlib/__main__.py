"""``python -m steerlib``: see :mod:`steerlib.apps.cli`."""

from steerlib.apps.cli import main

raise SystemExit(main())
