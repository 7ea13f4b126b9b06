"""The team's own preprocessing of camera frames for color_net (the ``preprocess.hook`` of the specs).

``prepare`` is right. ``prepare_forgot_bgr`` has the bug the pipeline check is there to catch: the camera
delivers BGR, the network was trained on RGB, and the channel reorder was forgotten.
"""

import numpy as np

MEAN = np.array([123.675, 116.28, 103.53], np.float32).reshape(1, 3, 1, 1)  # RGB, 0..255 pixel units
STD = np.array([58.395, 57.12, 57.375], np.float32).reshape(1, 3, 1, 1)


def prepare(frame: np.ndarray) -> np.ndarray:
    """[1, H, W, 3] uint8 BGR -> [1, 3, H, W] float32 RGB, normalised."""
    rgb = frame[..., ::-1].astype(np.float32)
    return (np.transpose(rgb, (0, 3, 1, 2)) - MEAN) / STD


def prepare_forgot_bgr(frame: np.ndarray) -> np.ndarray:
    """The planted bug: BGR frames normalised as if they were RGB."""
    x = frame.astype(np.float32)
    return (np.transpose(x, (0, 3, 1, 2)) - MEAN) / STD
