"""Data sources and formats: synthetic world, rosbag2 and KITTI tracking readers/writers."""
