"""Compute engines of the perception stack (``engines.sparse``: sparse 3D convolution)."""
