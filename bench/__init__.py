"""fastnn's benchmark suite: fastnn backends beside PyTorch, JAX and NumPy (see bench/README.md).

Not part of the installed package and not collected by the plain ``pytest`` run
(``testpaths = ["tests"]``); run it with ``python -m bench.run`` or
``pytest bench --benchmark-only``.
"""
