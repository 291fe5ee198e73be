"""Detector training and ONNX export."""
