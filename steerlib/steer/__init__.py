"""Steering (floor 3): vectors, the operator table, the hooks that apply it, one steering value.

* :mod:`~steerlib.steer.activations` — residual-stream capture and pooling (the sink left out);
* :mod:`~steerlib.steer.vectors` — :class:`~steerlib.steer.vectors.SteeringVector`, CAA;
* :mod:`~steerlib.steer.diagnostics` — per-layer checks of a vector (sink, one-token dominance);
* :mod:`~steerlib.steer.probe` — the linear probe behind gated steering;
* :mod:`~steerlib.steer.operators` — ONE table of every variant's math and what it needs;
* :mod:`~steerlib.steer.hooks` — ``steering()``: forward hooks, removed in ``finally``
  (:mod:`~steerlib.steer.handle`: the block's state; :mod:`~steerlib.steer.gate`: the gate);
* :mod:`~steerlib.steer.steering` — :class:`~steerlib.steer.steering.Steering`, the frozen value
  generation and the fluency passes take whole;
* :mod:`~steerlib.steer.variants` — the variants by name; ``Variant.bind`` makes a Steering.
"""
