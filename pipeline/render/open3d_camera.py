"""The camera of Open3D's legacy ``Visualizer`` for one geometry, as the official PointAD
scripts get it (``--style pointad``).

The scripts create a window, add one point cloud and read the view control's pinhole
parameters without moving the view. Open3D then looks at the centre of the cloud's
axis-aligned bounding box from the +z side (front = +z, up = +y), with a 60° vertical field
of view and a zoom of 0.7: the eye sits ``0.7 · max_extent / tan(30°)`` in front of the centre.
This module computes that camera from the numbers alone (no Open3D):

- :func:`legacy_camera` → :class:`LegacyCamera` (eye, axes, window size, clip planes);
- :meth:`LegacyCamera.intrinsic` / :meth:`LegacyCamera.extrinsic`: the OpenCV pinhole
  parameters Open3D reports (``convert_to_pinhole_camera_parameters``);
- :meth:`LegacyCamera.mvp`: the float32 model-view-projection matrix its shaders receive, so
  that a point lands on exactly the window pixel Open3D draws it on;
- :func:`project_pinhole`: ``cv2.projectPoints`` without distortion (the correspondences of
  the scripts), in float64.

Window coordinates follow OpenGL: x to the right, y up from the bottom row; images read back
are flipped so that row 0 is the top, as Open3D's capture does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FIELD_OF_VIEW_DEG = 60.0    # Open3D ViewControl's default field of view
ZOOM = 0.7                  # Open3D ViewControl's default zoom
NEAR_FRACTION = 0.01        # z_near = max(0.01 · max_extent, distance − 3 · max_extent)
CLIP_EXTENTS = 3.0          # z_far = distance + 3 · max_extent


@dataclass(frozen=True)
class LegacyCamera:
    """Open3D's default view of a geometry in a ``width`` × ``height`` window.

    Vectors are (3,) float64 world coordinates: ``eye``, ``lookat`` (bounding-box centre),
    unit ``front`` (from the centre toward the eye), ``up`` and ``right``; ``max_extent`` is
    the largest side of the bounding box and ``distance`` the eye's distance to ``lookat``.
    """
    width: int
    height: int
    eye: np.ndarray
    lookat: np.ndarray
    front: np.ndarray
    up: np.ndarray
    right: np.ndarray
    max_extent: float
    distance: float

    @property
    def z_near(self) -> float:
        return max(NEAR_FRACTION * self.max_extent, self.distance - CLIP_EXTENTS * self.max_extent)

    @property
    def z_far(self) -> float:
        return self.distance + CLIP_EXTENTS * self.max_extent

    def view(self) -> np.ndarray:
        """(4, 4) float32 OpenGL view matrix (world → camera, camera looking along −z)."""
        front = _unit(self.eye - self.lookat)
        up = _unit(self.up)
        right = _unit(np.cross(up, front))
        up = _unit(np.cross(front, right))
        m = np.zeros((4, 4))
        m[0, :3], m[1, :3], m[2, :3] = right, up, front
        m[0, 3], m[1, 3], m[2, 3] = -right @ self.eye, -up @ self.eye, -front @ self.eye
        m[3, 3] = 1.0
        return m.astype(np.float32)

    def projection(self) -> np.ndarray:
        """(4, 4) float32 OpenGL perspective projection of the field of view and clip planes."""
        t = math.tan(math.radians(FIELD_OF_VIEW_DEG) / 2.0)
        n, f = self.z_near, self.z_far
        m = np.zeros((4, 4))
        m[0, 0] = 1.0 / (self.width / self.height) / t
        m[1, 1] = 1.0 / t
        m[2, 2] = -(f + n) / (f - n)
        m[3, 2] = -1.0
        m[2, 3] = -2.0 * f * n / (f - n)
        return m.astype(np.float32)

    def mvp(self) -> np.ndarray:
        """(4, 4) float32 projection · view, multiplied in float32 as Open3D does (the model
        matrix is the identity)."""
        return np.matmul(self.projection(), self.view(), dtype=np.float32)

    def intrinsic(self) -> np.ndarray:
        """(3, 3) float64 pinhole intrinsics: fx = fy = height / (2 tan 30°), principal point at
        the window centre minus half a pixel."""
        f = self.height / math.tan(math.radians(FIELD_OF_VIEW_DEG) / 2.0) / 2.0
        return np.array([[f, 0.0, self.width / 2.0 - 0.5], [0.0, f, self.height / 2.0 - 0.5], [0.0, 0.0, 1.0]])

    def extrinsic(self) -> np.ndarray:
        """(4, 4) float64 world → OpenCV camera (x right, y down, z forward)."""
        front, up, right = _unit(self.front), _unit(self.up), _unit(self.right)
        m = np.zeros((4, 4))
        m[0, :3], m[1, :3], m[2, :3] = right, -up, -front
        m[0, 3], m[1, 3], m[2, 3] = -right @ self.eye, up @ self.eye, front @ self.eye
        m[3, 3] = 1.0
        return m


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / math.sqrt(float(v @ v))


def bounding_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min (3,), max (3,)) float64 corners of the axis-aligned box of (N, 3) ``points``."""
    p = np.asarray(points, dtype=np.float64)
    # column by column: numpy's reduction over axis 0 of (N, 3) runs 3 wide (a few times slower)
    return (np.array([p[:, a].min() for a in range(p.shape[1])]),
            np.array([p[:, a].max() for a in range(p.shape[1])]))


def legacy_camera(points: np.ndarray, width: int, height: int,
                  box: tuple[np.ndarray, np.ndarray] | None = None) -> LegacyCamera:
    """The view Open3D's legacy Visualizer sets up after ``add_geometry`` of (N, 3) ``points``
    in a ``width`` × ``height`` window (``ViewControl.Reset`` after fitting the bounding box);
    ``box``: the points' :func:`bounding_box`, when already known."""
    lo, hi = bounding_box(points) if box is None else box
    center = (lo + hi) / 2.0
    max_extent = float((hi - lo).max())
    front = np.array([0.0, 0.0, 1.0])
    up = np.array([0.0, 1.0, 0.0])
    right = _unit(np.cross(up, front))
    view_ratio = ZOOM * max_extent
    distance = view_ratio / math.tan(math.radians(FIELD_OF_VIEW_DEG) * 0.5)
    return LegacyCamera(int(width), int(height), center + front * distance, center, front, up, right,
                        max_extent, distance)


def project_pinhole(points: np.ndarray, intrinsic: np.ndarray, extrinsic: np.ndarray) -> np.ndarray:
    """(N, 2) float64 pixel coordinates (x = column, y = row) of (N, 3) world ``points`` through
    an OpenCV camera without distortion, as ``cv2.projectPoints`` computes them."""
    p = np.asarray(points, dtype=np.float64)
    cam = p @ extrinsic[:3, :3].T + extrinsic[:3, 3]
    xy = cam[:, :2] / cam[:, 2:3]
    return xy * np.array([intrinsic[0, 0], intrinsic[1, 1]]) + np.array([intrinsic[0, 2], intrinsic[1, 2]])


def window_positions(points: np.ndarray, mvp: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Where OpenGL puts (N, 3) ``points`` with the float32 ``mvp``: (N, 2) float32 window
    coordinates (x, y from the bottom) and (N,) float32 window depth in [0, 1]."""
    p = np.asarray(points, dtype=np.float32)
    clip = p @ mvp[:, :3].T + mvp[:, 3]
    ndc = clip[:, :3] / clip[:, 3:4]
    xy = (ndc[:, :2] + np.float32(1.0)) * np.float32(0.5) * np.array([width, height], dtype=np.float32)
    depth = (ndc[:, 2] + np.float32(1.0)) * np.float32(0.5)
    return xy.astype(np.float32), depth.astype(np.float32)
