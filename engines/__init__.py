"""Compute engines of the perception stack: ``engines.sparse`` (sparse 3D convolution) and
``engines.bev_pool`` (camera -> BEV pooling with the frustum geometry precomputed per calibration)."""
