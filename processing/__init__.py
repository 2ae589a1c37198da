"""The vectorised NumPy core: pure, synchronous, no I/O."""
