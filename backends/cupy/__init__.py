"""The cupy backend: ``backend`` (the ops), ``kernels`` (CUDA sources), ``graph`` (the CUDA-graph
trainer). Importing ``backend`` needs no CuPy; the other two do."""
