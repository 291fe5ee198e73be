"""Data sources and formats: synthetic world, rosbag2 and KITTI tracking readers/writers.

- ``world/``: procedural driving scenes rendered offscreen with exact ground truth
  (``WorldConfig``, ``render_sequence``, ``World``, ``correspondences``; see its docstring).
- ``bag``: rosbag2 MCAP writer/reader (``BagWriter``, ``read_bag``) for image, camera info,
  odometry, tf_static and ``/ground_truth/objects``.
- ``kitti``: KITTI tracking export/import (``KittiWriter``, ``read_kitti``).
- ``synth`` / ``preview``: the ``ba-perception synth`` and ``world-preview`` commands.
"""
