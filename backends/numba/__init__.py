"""The numba backend: ``backend`` (the backend: products, threads, when to compile),
``fused_ops`` (the layer path's fused ops), ``kernels`` (the layer kernels), ``simd`` (the vector
intrinsics both kernel families use), ``epoch*`` (the compiled whole epoch), ``cache`` (the disk
cache and the background compile), ``deferral`` (the reference ops while kernels compile)."""
