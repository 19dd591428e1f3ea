"""Camera sets and their matrices (the render store's ``views`` attribute).

Convention (DESIGN.md, OpenCV): a camera looks along its +z axis, x to the right,
y down. ``world_to_camera`` (4×4) maps normalized cloud coordinates to camera
coordinates; ``intrinsics`` (3×3, output pixels) maps them to pixels:

- orthographic: row = fy·y + cy, col = fx·x + cx
- perspective:  row = fy·y/z + cy, col = fx·x/z + cx

and the stored ``pixel`` is the floor of (row, col). Pixel (r, c) covers
[r, r+1) × [c, c+1), so its centre is (r + 0.5, c + 0.5).

Default framing (decided here): clouds are normalized into the unit ball, every
camera is orthographic, sits ``CAMERA_DISTANCE`` from the origin and covers
[-``HALF_EXTENT``, ``HALF_EXTENT``]² of its image plane (5% margin around the unit
disc, room for the splats of the outermost points), so fx = fy = W / (2·HALF_EXTENT)
and cx = cy = W / 2. Depth (camera z) of the unit ball lies in [2, 4].

Camera sets (rotations R applied to the cloud: p_cam = R·p + (0, 0, d)):

- ``paper``: 9 rotations about X by k·π/5, k = -4..4 (PointAD's views).
- ``scan``: rotations about X by -45, -15, 0, 15, 45 degrees and about Y by -30,
  -15, 15, 30 degrees: views around the sensor direction of one-sided scans
  (the identity view looks along +z, as MVTec 3D-AD's and Eyecandies' sensors).
- ``N`` (a positive integer): N viewing directions spread evenly over the sphere
  (Fibonacci lattice), each camera's y axis as close to world +y as possible.
"""
from __future__ import annotations

import math

import numpy as np

from data_cache.errors import PadError

HALF_EXTENT = 1.05
CAMERA_DISTANCE = 3.0
Z_NEAR = 1.5
Z_FAR = 4.5
MAX_VIEWS = 64
PAPER_STEPS = tuple(range(-4, 5))
SCAN_X_DEGREES = (-45.0, -15.0, 0.0, 15.0, 45.0)
SCAN_Y_DEGREES = (-30.0, -15.0, 15.0, 30.0)


def resolve_views(spec: str, one_sided: bool) -> str:
    """The camera set a ``--views`` value stands for: ``default`` becomes ``scan``
    for one-sided (organized, single-sensor) datasets and ``paper`` otherwise;
    other values are validated and returned normalized ("paper", "scan" or "N")."""
    spec = str(spec).strip().lower()
    if spec == "default":
        return "scan" if one_sided else "paper"
    if spec in ("paper", "scan"):
        return spec
    return str(_view_count(spec))


def _view_count(spec: str) -> int:
    try:
        n = int(spec)
    except ValueError:
        raise PadError(f"--views must be default, paper, scan or a number of views, not '{spec}'") from None
    if not 1 <= n <= MAX_VIEWS:
        raise PadError(f"--views {n}: the number of views must be between 1 and {MAX_VIEWS}")
    return n


def rotation_x(angle: float) -> np.ndarray:
    """(3, 3) float64 rotation by ``angle`` radians about the X axis."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_y(angle: float) -> np.ndarray:
    """(3, 3) float64 rotation by ``angle`` radians about the Y axis."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def look_rotation(view_dir: np.ndarray) -> np.ndarray:
    """(3, 3) world→camera rotation whose camera +z axis is ``view_dir`` (3,), the
    direction the camera looks along, with the camera y axis (down) as close to
    world +y as possible (world −z near the poles)."""
    z = np.asarray(view_dir, dtype=np.float64)
    z = z / np.linalg.norm(z)
    up = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.99 else np.array([0.0, 0.0, -1.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])  # rows: camera axes in world coordinates


def fibonacci_directions(n: int) -> np.ndarray:
    """(n, 3) float64 unit vectors spread evenly over the sphere (golden-angle spiral)."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def orthographic_intrinsics(image_size: int, half_extent: float = HALF_EXTENT) -> np.ndarray:
    """(3, 3) float64 intrinsics (output pixels) covering [-half_extent, half_extent]²."""
    f = image_size / (2.0 * half_extent)
    c = image_size / 2.0
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


def camera_dict(name: str, rotation: np.ndarray, image_size: int) -> dict:
    """One entry of the ``views`` attribute: {name, world_to_camera (4×4 list),
    intrinsics (3×3 list), projection}."""
    w2c = np.eye(4)
    w2c[:3, :3] = rotation
    w2c[:3, 3] = (0.0, 0.0, CAMERA_DISTANCE)
    return {"name": name, "world_to_camera": w2c.tolist(),
            "intrinsics": orthographic_intrinsics(image_size).tolist(),
            "projection": "orthographic"}


def make_cameras(spec: str, image_size: int) -> list[dict]:
    """The cameras of a view set (``paper``, ``scan`` or ``N``; ``default`` must be
    resolved first with :func:`resolve_views`) for images of ``image_size`` pixels."""
    spec = str(spec).strip().lower()
    if spec == "default":
        raise PadError("internal: resolve --views default with resolve_views() before make_cameras()")
    if image_size < 8:
        raise PadError(f"--image-size {image_size} is too small (at least 8 pixels)")
    cams = []
    if spec == "paper":
        for k in PAPER_STEPS:
            cams.append(camera_dict(f"x{k * 36:+d}", rotation_x(k * math.pi / 5.0), image_size))
    elif spec == "scan":
        for deg in SCAN_X_DEGREES:
            cams.append(camera_dict(f"x{deg:+.0f}", rotation_x(math.radians(deg)), image_size))
        for deg in SCAN_Y_DEGREES:
            cams.append(camera_dict(f"y{deg:+.0f}", rotation_y(math.radians(deg)), image_size))
    else:
        n = _view_count(spec)
        for i, d in enumerate(fibonacci_directions(n)):
            # d points from the object towards the camera; the camera looks along -d.
            cams.append(camera_dict(f"fib{i:02d}", look_rotation(-d), image_size))
    return cams


def camera_arrays(camera: dict) -> tuple[np.ndarray, np.ndarray, bool]:
    """(world_to_camera (4, 4) float64, intrinsics (3, 3) float64, is_perspective)
    of one camera dict, validated."""
    w2c = np.asarray(camera["world_to_camera"], dtype=np.float64)
    k = np.asarray(camera["intrinsics"], dtype=np.float64)
    projection = camera.get("projection", "orthographic")
    if w2c.shape != (4, 4) or k.shape != (3, 3) or projection not in ("orthographic", "perspective"):
        raise PadError(f"camera '{camera.get('name')}' is malformed (world_to_camera 4×4, intrinsics 3×3, "
                       "projection orthographic|perspective)")
    return w2c, k, projection == "perspective"
