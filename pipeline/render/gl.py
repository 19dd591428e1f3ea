"""Offscreen splat renderer (pyrender), one per worker process.

Platform: ``PYOPENGL_PLATFORM`` must be set before PyOpenGL is first imported.
:func:`configure_platform` does it: an explicit backend (``osmesa``/``egl``) is
used as asked; ``auto`` keeps a value the user exported, else picks EGL when an
NVIDIA device node and libEGL are present, OSMesa otherwise. Asking for a platform
other than the one an already-imported PyOpenGL uses is a :class:`PadError`.

The renderer draws ONE pyrender mesh per sample (the surfels of
:mod:`pipeline.render.surfels`) with a directional light attached to the camera
node (a headlight), a grey albedo and a white background, using pad's own small
shaders (:mod:`pipeline.render.shaders`: two-sided Lambert, or flat per-vertex
colour). The pyrender camera is built from the stored matrices of a camera dict
(:func:`gl_projection`, :func:`gl_camera_pose`): the images and the point→pixel
map come from the same numbers.

With OSMesa pyrender draws into the context's own single-sampled buffer; with
EGL into a 4× multisampled framebuffer that it resolves (only splat edges blend).
The depth image is read back at the render resolution and converted to camera z
(pyrender linearizes every depth buffer as if the camera were perspective; that
is undone for orthographic cameras).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import tempfile

import numpy as np

from data_cache.errors import PadError
from pipeline.render.cameras import Z_FAR, Z_NEAR, camera_arrays

BACKENDS = ("auto", "osmesa", "egl")
BACKGROUND = (1.0, 1.0, 1.0)
ALBEDO = 0.78           # grey, in [0, 1]
AMBIENT = 0.16          # ambient light (fraction of full light)
HEADLIGHT = 0.84        # directional light intensity; ambient + headlight = 1: facing splats get the albedo

# Renderers of this process by (width, height, platform).
_RENDERERS: dict[tuple[int, int, str], "SplatRenderer"] = {}
# Point renderers (--style pointad) of this process, likewise.
_POINT_RENDERERS: dict[tuple[int, int, str], "PointRenderer"] = {}


def _gpu_present() -> bool:
    """An NVIDIA device and libEGL (the same test as pipeline.dask_cluster.gl_platform,
    plus the library check)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) and ctypes.util.find_library("EGL") is not None


def configure_platform(backend: str = "auto") -> str:
    """Set ``PYOPENGL_PLATFORM`` for ``backend`` (auto|osmesa|egl) if PyOpenGL is not
    imported yet and return the platform in use."""
    if backend not in BACKENDS:
        raise PadError(f"--backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    current = os.environ.get("PYOPENGL_PLATFORM")
    if backend == "auto":
        wanted = current or ("egl" if _gpu_present() else "osmesa")
    else:
        wanted = backend
    if "OpenGL" in sys.modules:
        in_use = current or "default"
        if in_use != wanted:
            raise PadError(f"OpenGL was already loaded for the '{in_use}' platform in this process; "
                           f"cannot switch to '{wanted}' (set PYOPENGL_PLATFORM={wanted} before starting)")
        return wanted
    os.environ["PYOPENGL_PLATFORM"] = wanted
    return wanted


def gl_projection(intrinsics: np.ndarray, width: int, height: int, perspective: bool,
                  znear: float = Z_NEAR, zfar: float = Z_FAR) -> np.ndarray:
    """(4, 4) OpenGL projection matrix (acting on OpenGL camera coordinates: x right,
    y up, looking along −z) that puts a camera-space point exactly where the
    OpenCV ``intrinsics`` (pixels of a ``width``×``height`` image) put it.

    Window x = col and window (H − y) = row, so pixel (r, c) covers the same area
    for OpenGL and for ``floor`` of the projected (row, col)."""
    k = np.asarray(intrinsics, dtype=np.float64)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    w, h, n, f = float(width), float(height), float(znear), float(zfar)
    p = np.zeros((4, 4))
    if perspective:
        p[0, 0] = 2.0 * fx / w
        p[0, 2] = 1.0 - 2.0 * cx / w
        p[1, 1] = 2.0 * fy / h
        p[1, 2] = 2.0 * cy / h - 1.0
        p[2, 2] = -(f + n) / (f - n)
        p[2, 3] = -2.0 * f * n / (f - n)
        p[3, 2] = -1.0
    else:
        p[0, 0] = 2.0 * fx / w
        p[0, 3] = 2.0 * cx / w - 1.0
        p[1, 1] = 2.0 * fy / h
        p[1, 3] = 1.0 - 2.0 * cy / h
        p[2, 2] = -2.0 / (f - n)
        p[2, 3] = -(f + n) / (f - n)
        p[3, 3] = 1.0
    return p


def gl_camera_pose(world_to_camera: np.ndarray) -> np.ndarray:
    """(4, 4) camera-to-world pose of the OpenGL camera (y up, looking along −z)
    equivalent to an OpenCV ``world_to_camera`` (y down, looking along +z)."""
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    return np.linalg.inv(np.asarray(world_to_camera, dtype=np.float64)) @ flip


def scaled_intrinsics(intrinsics: np.ndarray, factor: int) -> np.ndarray:
    """(3, 3) intrinsics of the same camera for an image ``factor`` times larger."""
    k = np.array(intrinsics, dtype=np.float64)
    k[:2] *= factor
    return k


def context_address(context) -> int:
    """The address of an OpenGL context handle (an OSMesa/EGL opaque ctypes pointer, or an
    int), equal for every handle of the same context."""
    if context is None or isinstance(context, int):
        return int(context or 0)
    return ctypes.cast(context, ctypes.c_void_p).value or 0


def program_cache(sources: dict[str, str]):
    """A pyrender shader-program cache of ``sources`` (file name -> GLSL source, as
    :mod:`pipeline.render.shaders` gives them) that finds a compiled program again on every draw.

    pyrender's own cache keys programs on ``OpenGL.contextdata.getContext()``, which under
    OSMesa and EGL is a new ctypes pointer object on every call (hashed by identity): no key
    ever matches, so every draw compiled its programs again and memory grew by megabytes a scan.
    This one keys on the context's address. One cache belongs to one renderer (one context), and
    pyrender deletes its programs when the renderer is deleted. pyrender compiles from files: a
    program's files are written into a temporary directory (``pad-shaders-*``) that exists only
    while it is compiled, here, when first asked for (the context is current then)."""
    import OpenGL.contextdata
    from pyrender.shader_program import ShaderProgram, ShaderProgramCache

    class ProgramCache(ShaderProgramCache):
        def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
            defines = dict(defines or {})
            files = [name for name in (vertex_shader, fragment_shader, geometry_shader) if name is not None]
            key = (context_address(OpenGL.contextdata.getContext()),
                   tuple(sorted(os.path.basename(name) for name in files)), tuple(sorted(defines.items())))
            program = self._program_cache.get(key)
            if program is None:
                with tempfile.TemporaryDirectory(prefix="pad-shaders-") as folder:
                    paths = [os.path.join(folder, os.path.basename(name)) for name in files]
                    for path in paths:
                        with open(path, "w") as fh:
                            fh.write(sources[os.path.basename(path)])
                    program = ShaderProgram(*(paths + [None] * (3 - len(paths))), defines=defines)
                    program._add_to_context()
                self._program_cache[key] = program
            return program

    return ProgramCache()


class SplatRenderer:
    """An offscreen renderer of ``width``×``height`` pixels with one scene (camera,
    headlight, at most one mesh). Reused across samples via :func:`get_renderer`."""

    def __init__(self, width: int, height: int):
        import pyrender

        from pipeline.render.shaders import shader_sources

        self._pyrender = pyrender
        self.width, self.height = int(width), int(height)
        self._offscreen = pyrender.OffscreenRenderer(self.width, self.height)
        # pad's shaders instead of pyrender's PBR ones (see pipeline.render.shaders)
        self._offscreen._renderer._program_cache = program_cache(shader_sources())
        self.scene = pyrender.Scene(bg_color=(*BACKGROUND, 1.0), ambient_light=(AMBIENT,) * 3)
        self._camera = _MatrixCamera(np.eye(4), Z_NEAR, Z_FAR, pyrender.Camera)
        self._camera_node = self.scene.add(self._camera, pose=np.eye(4))
        light = pyrender.DirectionalLight(color=np.ones(3), intensity=HEADLIGHT)
        self.scene.add(light, pose=np.eye(4), parent_node=self._camera_node)
        self._mesh_node = None
        self._material = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=(ALBEDO, ALBEDO, ALBEDO, 1.0), metallicFactor=0.0, roughnessFactor=1.0,
            doubleSided=True)
        self._flat = False

    def set_mesh(self, vertices: np.ndarray, normals: np.ndarray, faces: np.ndarray,
                 colors: np.ndarray | None = None) -> None:
        """Replace the scene's mesh: ``vertices`` (M, 3) float32, ``normals`` (M, 3)
        float32, ``faces`` (F, 3) uint32; ``colors`` (M, 3) uint8 switches to flat
        per-vertex colour rendering (no lighting)."""
        pr = self._pyrender
        if self._mesh_node is not None:
            self.scene.remove_node(self._mesh_node)
            self._mesh_node = None
        color_0 = None
        if colors is not None:
            color_0 = np.concatenate([np.asarray(colors, np.float32) / 255.0,
                                      np.ones((len(colors), 1), np.float32)], axis=1)
        prim = pr.Primitive(positions=np.ascontiguousarray(vertices, np.float32),
                            normals=np.ascontiguousarray(normals, np.float32),
                            indices=np.ascontiguousarray(faces, np.uint32),
                            color_0=color_0, material=self._material, mode=pr.constants.GLTF.TRIANGLES)
        self._mesh_node = self.scene.add(pr.Mesh(primitives=[prim]))
        self._flat = colors is not None

    def clear(self) -> None:
        """Drop the mesh (frees its GPU buffers at the next render)."""
        if self._mesh_node is not None:
            self.scene.remove_node(self._mesh_node)
            self._mesh_node = None

    def render(self, camera: dict, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Render the mesh through ``camera`` (a camera dict in output pixels) at
        ``supersample`` × its resolution (the renderer's size must be the output
        size × supersample).

        Returns ``color`` (h, w, 3) uint8 and ``depth`` (h, w) float32 camera z
        (+inf where nothing was drawn), both at render resolution.
        """
        w2c, k, perspective = camera_arrays(camera)
        k = scaled_intrinsics(k, supersample)
        self._camera.matrix = gl_projection(k, self.width, self.height, perspective)
        self.scene.set_pose(self._camera_node, gl_camera_pose(w2c))
        flags = self._pyrender.RenderFlags.FLAT if self._flat else self._pyrender.RenderFlags.NONE
        color, depth = self._offscreen.render(self.scene, flags=flags)
        return color, _camera_depth(depth, perspective)

    def delete(self) -> None:
        self.clear()
        self._offscreen.delete()


class PointRenderer:
    """An offscreen renderer of ``width``×``height`` pixels that draws one point cloud as
    OpenGL points (``--style pointad``): square points of a fixed size in window pixels, each in
    its own grey level, projected by a given float32 model-view-projection matrix, with the depth
    test of Open3D's legacy renderer (``GL_LESS``: of points on one pixel, the nearest wins, the
    first drawn on equal depth). Multisampling is off on every platform (pyrender's
    segmentation pass, with pad's point shaders), so each pixel shows exactly one point or the
    background. That pass clears to black; over a white background a point's grey ``g`` is
    drawn as ``255 − g`` and the red channel read back inverted, so that uncovered pixels come out
    white without a coverage mask. Reused across samples via :func:`get_point_renderer`."""

    def __init__(self, width: int, height: int):
        import pyrender

        self._pyrender = pyrender
        self.width, self.height = int(width), int(height)
        self._offscreen = pyrender.OffscreenRenderer(self.width, self.height)
        self._caches: dict[float, object] = {}
        self.scene = pyrender.Scene(bg_color=(0.0, 0.0, 0.0, 1.0))
        self._camera = _MatrixCamera(np.eye(4), Z_NEAR, Z_FAR, pyrender.Camera)
        self.scene.add(self._camera, pose=np.eye(4))        # V = identity: P carries the whole MVP

    def _use_point_size(self, point_size: float) -> None:
        from pipeline.render.shaders import point_shader_sources

        size = float(point_size)
        cache = self._caches.get(size)
        if cache is None:
            cache = self._caches[size] = program_cache(point_shader_sources(size))
        self._offscreen._renderer._program_cache = cache

    def render(self, points: np.ndarray, grey: np.ndarray, mvp: np.ndarray, point_size: float,
               background: int) -> np.ndarray:
        """Draw (N, 3) ``points`` (float32 on the GPU, as Open3D uploads them) in (N,) uint8
        ``grey`` levels through the (4, 4) float32 ``mvp``, each ``point_size`` pixels wide, over
        a black (``background`` 0) or white (255) background. Returns the (height, width) uint8
        image, row 0 at the top."""
        if background not in (0, 255):
            raise ValueError(f"background must be 0 or 255, not {background}")
        pr = self._pyrender
        invert = background == 255
        self._use_point_size(point_size)
        level = np.asarray(grey, dtype=np.uint8)
        color = np.empty((len(level), 4), dtype=np.float32)
        color[:, 0] = (255 - level if invert else level).astype(np.float32) / np.float32(255.0)
        color[:, 1:] = 1.0
        prim = pr.Primitive(positions=np.ascontiguousarray(points, dtype=np.float32), color_0=color,
                            mode=pr.constants.GLTF.POINTS)
        node = self.scene.add(pr.Mesh(primitives=[prim]))
        try:
            self._camera.matrix = np.asarray(mvp, dtype=np.float32).astype(np.float64)
            red = self._draw({node: (0, 0, 0)})
        finally:
            self.scene.remove_node(node)
        return 255 - red if invert else red

    def _draw(self, seg_node_map: dict) -> np.ndarray:
        """pyrender's segmentation pass; returns the red channel, (height, width) uint8, row 0 at
        the top. Where the platform has no framebuffer objects (OSMesa) only that channel is read,
        into an array: ``OffscreenRenderer.render`` would also read back and linearize the depth
        buffer and copy the whole colour buffer through bytes, which took two thirds of a 1024²
        render."""
        off, flags = self._offscreen, self._pyrender.RenderFlags.SEG
        if off._platform.supports_framebuffers():
            return np.ascontiguousarray(off.render(self.scene, flags=flags, seg_node_map=seg_node_map)[0][..., 0])
        from OpenGL import GL

        off._platform.make_current()
        try:
            renderer = off._renderer
            renderer.viewport_width, renderer.viewport_height = self.width, self.height
            renderer.render(self.scene, flags, seg_node_map)
            GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, 0)
            GL.glReadBuffer(GL.GL_FRONT)
            GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)
            red = np.empty((self.height, self.width), dtype=np.uint8)
            GL.glReadPixels(0, 0, self.width, self.height, GL.GL_RED, GL.GL_UNSIGNED_BYTE, red)
            return red[::-1]
        finally:
            off._platform.make_uncurrent()

    def delete(self) -> None:
        self._offscreen.delete()


def _camera_depth(depth: np.ndarray, perspective: bool, znear: float = Z_NEAR,
                  zfar: float = Z_FAR) -> np.ndarray:
    """Camera z (h, w) float32 from pyrender's depth image (0 = background → +inf).

    pyrender linearizes every depth buffer with the perspective formula
    L = 2nf / (f + n − z_ndc (f − n)); for an orthographic camera z = ((f − n) z_ndc
    + f + n) / 2, which is z = f + n − nf / L."""
    d = np.array(depth, dtype=np.float32)                   # a writable copy
    background = d <= 0
    if not perspective:
        n, f = np.float32(znear), np.float32(zfar)
        np.divide(-n * f, d, out=d, where=~background)
        d += f + n
    d[background] = np.inf
    return d


def _MatrixCamera(matrix, znear, zfar, base):
    """A pyrender camera whose projection is a given (4, 4) matrix."""

    class MatrixCamera(base):
        def __init__(self):
            super().__init__(znear=znear, zfar=zfar)
            self.matrix = matrix

        def get_projection_matrix(self, width=None, height=None):
            return self.matrix

    return MatrixCamera()


def _create(cls, width: int, height: int, platform: str):
    """``cls(width, height)``; a context that cannot be created is a PadError saying what to install."""
    try:
        return cls(width, height)
    except PadError:
        raise
    except Exception as exc:  # missing libOSMesa / EGL device: say what to install
        hint = ("install libOSMesa (apt-get install libosmesa6)" if platform == "osmesa"
                else "check the GPU driver and libEGL, or use --backend osmesa")
        raise PadError(f"cannot create an offscreen OpenGL context with '{platform}' "
                       f"({type(exc).__name__}: {exc}); {hint}") from None


def get_renderer(width: int, height: int, backend: str = "auto") -> SplatRenderer:
    """This process's renderer of that size (created on first use, then reused)."""
    return _reused(_RENDERERS, SplatRenderer, width, height, backend)


def get_point_renderer(width: int, height: int, backend: str = "auto") -> PointRenderer:
    """This process's point renderer of that size (created on first use, then reused)."""
    return _reused(_POINT_RENDERERS, PointRenderer, width, height, backend)


def _reused(renderers: dict, cls, width: int, height: int, backend: str):
    platform = configure_platform(backend)
    key = (int(width), int(height), platform)
    if key not in renderers:
        renderers[key] = _create(cls, width, height, platform)
    return renderers[key]


def release_renderers() -> None:
    """Delete this process's renderers (tests, end of a worker)."""
    for cache in (_RENDERERS, _POINT_RENDERERS):
        while cache:
            _, renderer = cache.popitem()
            try:
                renderer.delete()
            except Exception:
                pass
