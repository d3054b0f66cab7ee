"""Data sets: the bundled MNIST sample and the IDX reader (issue 3)."""
