"""The colour Open3D's legacy renderer gives each point of a cloud with normals
(``PhongShaderForPointCloud``), computed on the CPU for ``--style pointad``.

An OpenGL point is a square of one colour: its fragments all read the same vertex outputs. So
the colour is a function of the point alone, evaluated here in float32 as Open3D's shaders do:

- four point lights at ``c + e·(r_x·right + r_y·up + r_z·front)`` (``c``, ``e``: centre and largest
  side of the view's bounding box; ``(r_x, r_y, r_z)`` = (0, 0, 2), (0, 0, 2), (0, 0, −2),
  (0, 0, −2): two lights in front of the object, two behind), white;
- in camera coordinates: the normal turned toward the eye (the sign of an estimated normal
  does not matter), ``n``, ``e`` (toward the eye) and ``l`` (toward the light) normalized,
  ``r = reflect(−l, n)``;
- colour = ambient·c + Σ_lights [c · diffuse · clamp(n·l, 0, 1) + specular · clamp(e·r, 0, 1)^shininess]
  with the light on: ambient 0, diffuse 0.66, specular 0.2, shininess 100. (With the light
  off, as for the ground-truth render, ambient is 1 and the other terms 0: the colour itself.)

The result is rounded to 8 bits as the framebuffer stores it (values above 1 saturate).
"""
from __future__ import annotations

import numpy as np

from pipeline.render.open3d_camera import LegacyCamera

LIGHTS_RELATIVE = ((0.0, 0.0, 2.0), (0.0, 0.0, 2.0), (0.0, 0.0, -2.0), (0.0, 0.0, -2.0))
DIFFUSE = 0.66
SPECULAR = 0.2
SHININESS = 100.0
AMBIENT = 0.0


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) dot products of the rows of (N, 3) float32 ``a`` and ``b``, summed in order,
    (a₀b₀ + a₁b₁) + a₂b₂ in float32: what ``np.einsum("ij,ij->i")`` gives on float32 rows of 3
    (its loop over the 3 columns), without its per-row overhead."""
    out = a[:, 0] * b[:, 0]
    out += a[:, 1] * b[:, 1]
    out += a[:, 2] * b[:, 2]
    return out


def _normalize(v: np.ndarray) -> np.ndarray:
    """Rows of (N, 3) float32 ``v`` scaled to unit length (GLSL ``normalize``)."""
    return v / np.sqrt(_dot(v, v))[:, None]


def light_positions(camera: LegacyCamera) -> np.ndarray:
    """(4, 3) float32 world positions of Open3D's four default lights for ``camera``."""
    f32 = np.float32
    center = camera.lookat.astype(f32)
    extent = f32(camera.max_extent)
    right, up, front = camera.right.astype(f32), camera.up.astype(f32), camera.front.astype(f32)
    rel = np.asarray(LIGHTS_RELATIVE, dtype=f32)
    return center + extent * (rel[:, :1] * right + rel[:, 1:2] * up + rel[:, 2:3] * front)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """(…) float colours in [0, ∞) → uint8, saturated at 1 and rounded to nearest, as an 8-bit
    framebuffer stores them."""
    return np.floor(np.clip(values, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


def phong_grey(points: np.ndarray, normals: np.ndarray, grey: float, camera: LegacyCamera,
               rows: np.ndarray | None = None) -> np.ndarray:
    """(N,) uint8 grey levels of points of colour (``grey``, ``grey``, ``grey``) drawn by Open3D's
    Phong point shader with its lights on (the three channels are equal: a grey colour times
    the diffuse terms plus white specular terms).

    - ``points``, ``normals``: (N, 3) float, world coordinates (normals of any sign)
    - ``camera``: the view (its bounding box places the lights)
    - ``rows``: (M,) indices: the levels of those points only, (M,), each the level the whole
      cloud gives it (the matrix products to camera space still run over all N rows, as BLAS may
      round a row differently in a smaller product; the rest is element by element)
    """
    f32 = np.float32
    c = f32(grey)
    view = camera.view()
    rot, shift = view[:3, :3], view[:3, 3]
    v_cam = np.asarray(points, dtype=f32) @ rot.T + shift
    n_cam = np.asarray(normals, dtype=f32) @ rot.T
    if rows is not None:
        v_cam, n_cam = v_cam[rows], n_cam[rows]
    eye = -v_cam
    flip = _dot(eye, n_cam) < 0
    n_cam[flip] *= f32(-1.0)
    n = _normalize(n_cam)
    e = _normalize(eye)
    e_dot_n = _dot(e, n)                          # the same in every light's reflection term
    lights = light_positions(camera) @ rot.T + shift
    terms = {}
    out = np.full(len(v_cam), f32(AMBIENT) * c, dtype=f32)
    for light in lights:                          # the shader's sum, light by light, in order
        key = tuple(light.tolist())
        if key not in terms:                      # Open3D's lights come in identical pairs
            l = _normalize(light - v_cam)
            n_dot_l = _dot(n, l)
            e_dot_r = f32(2.0) * n_dot_l * e_dot_n - _dot(e, l)
            diffuse = c * f32(DIFFUSE) * np.clip(n_dot_l, f32(0.0), f32(1.0))
            specular = f32(SPECULAR) * np.power(np.clip(e_dot_r, f32(0.0), f32(1.0)), f32(SHININESS))
            terms[key] = (diffuse, specular)
        diffuse, specular = terms[key]
        out += diffuse
        out += specular
    return to_uint8(out)
