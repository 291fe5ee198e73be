"""One thin module per ROS 2 node: parameters -> core objects -> callbacks."""
