"""Everything that touches rclpy: message conversion, QoS, synchronizer, node helpers."""
