"""ba_perception: camera-only 3D detection, object bundle adjustment and 3D tracking on ROS 2."""

__version__ = "0.1.0"
