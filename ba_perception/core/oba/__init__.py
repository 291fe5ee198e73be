"""Object-centric bundle adjustment (BA-Det second stage): tracklets, correspondences, batched LM."""
