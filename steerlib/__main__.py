"""``python -m steerlib``: see :mod:`steerlib.cli`."""

from steerlib.cli import main

raise SystemExit(main())
