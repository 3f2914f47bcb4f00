"""Steering (floor 3): vectors, the hooks that apply them, the steering variants.

* :mod:`~steerlib.steer.activations` — residual-stream capture and pooling (the sink left out);
* :mod:`~steerlib.steer.vectors` — :class:`~steerlib.steer.vectors.SteeringVector`, CAA;
* :mod:`~steerlib.steer.diagnostics` — per-layer checks of a vector (sink, one-token dominance);
* :mod:`~steerlib.steer.probe` — the linear probe behind gated steering;
* :mod:`~steerlib.steer.hooks` — ``steering()``: forward hooks, removed in ``finally``;
* :mod:`~steerlib.steer.variants` — the steering variants and their fitted inputs.
"""
