"""Monocular 3D detector: network, preprocessing, decoding and inference backends (no ROS)."""
