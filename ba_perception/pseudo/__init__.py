"""BA2-Det pseudo 3D labels from 2D labels and odometry: reconstruction with known poses, DoubleClustering, box fitting.

Pipeline (``ba-perception pseudo-label``): :mod:`.reconstruct` (KLT tracks in the 2D label boxes,
triangulated with the camera poses fixed from odometry x mounting) -> :mod:`.clustering`
(DoubleClustering: per-frame main cluster in each box after ground removal, per-track merge over
time) -> :mod:`.boxfit` (L-shape yaw, class-prior completion, 2D-box agreement optimisation,
heading, agreement / static filter) -> :mod:`.labels` (KITTI tracking files, JSON, points).
"""
