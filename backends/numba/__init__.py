"""The numba backend: ``backend`` (the ops), ``kernels`` (the layer kernels), ``simd`` (the vector
intrinsics both kernel families use), ``epoch*`` (the compiled whole epoch), ``cache`` (the disk
cache and the background compile)."""
