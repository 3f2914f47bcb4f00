"""Tools around the library: ``python -m steerlib bench`` and ``python -m steerlib doctor``."""
