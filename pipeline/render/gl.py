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
    """An offscreen renderer that draws one point cloud as OpenGL points (``--style pointad``):
    square points of a fixed size in window pixels, each in its own grey level, projected by a
    given float32 model-view-projection matrix, with the depth test of Open3D's legacy renderer
    (``GL_LESS``: of points on one pixel, the nearest wins, the first drawn on equal depth), in a
    window of at most ``width``×``height`` pixels (each draw names its own, from the bottom-left
    corner). Nothing is multisampled, so each pixel shows exactly one point or the background.
    Draws clear to black; over a white background a point's grey ``g`` is drawn as ``255 − g`` and
    the red channel read back inverted, so that uncovered pixels come out white.

    One context (pyrender's platform: OSMesa or EGL), one vertex array, one position buffer and
    one colour buffer per slot, one compiled program per point size, reused across draws and
    samples: a view's positions are uploaded once (:meth:`set_positions`) and drawn with any slot's
    colours (:meth:`set_levels`), changing only the matrix and the window. Under OSMesa the image
    is read from the context's own buffer; under EGL from a single-sampled framebuffer object.
    Reused across samples via :func:`get_point_renderer`."""

    def __init__(self, width: int, height: int):
        import pyrender
        from OpenGL import GL

        self.width, self.height = int(width), int(height)
        self._offscreen = pyrender.OffscreenRenderer(self.width, self.height)
        self._platform = self._offscreen._platform
        self._programs: dict[float, tuple[int, int]] = {}       # point size -> (program, location of P)
        self._slots: dict[int, tuple[int, int]] = {}            # slot -> (buffer, background)
        self._n = 0
        self._platform.make_current()
        try:
            self._vao = GL.glGenVertexArrays(1)
            self._positions = GL.glGenBuffers(1)
            self._fbo, self._renderbuffers = 0, []
            if self._platform.supports_framebuffers():
                self._renderbuffers = list(GL.glGenRenderbuffers(2))
                for rb, fmt in zip(self._renderbuffers, (GL.GL_RGBA8, GL.GL_DEPTH_COMPONENT24)):
                    GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, rb)
                    GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, fmt, self.width, self.height)
                self._fbo = GL.glGenFramebuffers(1)
                GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self._fbo)
                GL.glFramebufferRenderbuffer(GL.GL_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_RENDERBUFFER,
                                             self._renderbuffers[0])
                GL.glFramebufferRenderbuffer(GL.GL_FRAMEBUFFER, GL.GL_DEPTH_ATTACHMENT, GL.GL_RENDERBUFFER,
                                             self._renderbuffers[1])
        finally:
            self._platform.make_uncurrent()

    def _program(self, point_size: float) -> tuple[int, int]:
        """(program, location of ``P``) drawing points ``point_size`` pixels wide (context current)."""
        from OpenGL import GL
        from OpenGL.GL import shaders

        from pipeline.render.shaders import point_shader_sources

        size = float(point_size)
        if size not in self._programs:
            sources = point_shader_sources(size)
            vert = sources["segmentation.vert"].replace("COLOR_0_LOC", "1")     # the colour is attribute 1
            frag = sources["segmentation.frag"]
            GL.glBindVertexArray(self._vao)                     # core profile: validation needs a VAO
            program = shaders.compileProgram(shaders.compileShader(vert, GL.GL_VERTEX_SHADER),
                                             shaders.compileShader(frag, GL.GL_FRAGMENT_SHADER))
            self._programs[size] = (program, GL.glGetUniformLocation(program, "P"))
        return self._programs[size]

    def set_positions(self, points: np.ndarray) -> None:
        """Upload (N, 3) ``points`` (float32 on the GPU, as Open3D uploads them) for the next draws."""
        from OpenGL import GL

        p = np.ascontiguousarray(points, dtype=np.float32)
        self._platform.make_current()
        try:
            GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self._positions)
            GL.glBufferData(GL.GL_ARRAY_BUFFER, p.nbytes, p, GL.GL_STREAM_DRAW)
        finally:
            self._platform.make_uncurrent()
        self._n = len(p)

    def set_levels(self, slot: int, grey: np.ndarray, background: int) -> None:
        """Colours of ``slot``: (N,) uint8 ``grey`` levels of the points over a black
        (``background`` 0) or white (255) background."""
        from OpenGL import GL

        if background not in (0, 255):
            raise ValueError(f"background must be 0 or 255, not {background}")
        level = np.asarray(grey, dtype=np.uint8)
        value = np.ascontiguousarray((255 - level if background == 255 else level).astype(np.float32)
                                     / np.float32(255.0))
        self._platform.make_current()
        try:
            buffer = self._slots[slot][0] if slot in self._slots else GL.glGenBuffers(1)
            GL.glBindBuffer(GL.GL_ARRAY_BUFFER, buffer)
            GL.glBufferData(GL.GL_ARRAY_BUFFER, value.nbytes, value, GL.GL_STREAM_DRAW)
        finally:
            self._platform.make_uncurrent()
        self._slots[slot] = (buffer, background)

    def draw(self, slot: int, mvp: np.ndarray, point_size: float, width: int, height: int) -> np.ndarray:
        """Draw the uploaded points in the colours of ``slot`` through the (4, 4) float32 ``mvp``,
        each ``point_size`` pixels wide, in a ``width``×``height`` window (at most the renderer's
        size). Returns the (height, width) uint8 image, row 0 at the top."""
        from OpenGL import GL

        w, h = int(width), int(height)
        if w > self.width or h > self.height:
            raise ValueError(f"a {w}x{h} window does not fit this {self.width}x{self.height} renderer")
        buffer, background = self._slots[slot]
        self._platform.make_current()
        try:
            program, loc = self._program(point_size)
            GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self._fbo)
            GL.glViewport(0, 0, w, h)
            GL.glEnable(GL.GL_DEPTH_TEST)
            GL.glDepthMask(GL.GL_TRUE)
            GL.glDepthFunc(GL.GL_LESS)
            GL.glDepthRange(0.0, 1.0)
            GL.glDisable(GL.GL_MULTISAMPLE)
            GL.glDisable(GL.GL_BLEND)
            GL.glEnable(GL.GL_PROGRAM_POINT_SIZE)
            GL.glClearColor(0.0, 0.0, 0.0, 1.0)
            GL.glClear(GL.GL_COLOR_BUFFER_BIT | GL.GL_DEPTH_BUFFER_BIT)
            GL.glUseProgram(program)
            GL.glUniformMatrix4fv(loc, 1, GL.GL_TRUE, np.ascontiguousarray(mvp, dtype=np.float32))
            GL.glBindVertexArray(self._vao)
            GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self._positions)
            GL.glVertexAttribPointer(0, 3, GL.GL_FLOAT, GL.GL_FALSE, 0, None)
            GL.glEnableVertexAttribArray(0)
            GL.glBindBuffer(GL.GL_ARRAY_BUFFER, buffer)
            GL.glVertexAttribPointer(1, 1, GL.GL_FLOAT, GL.GL_FALSE, 0, None)
            GL.glEnableVertexAttribArray(1)
            GL.glDrawArrays(GL.GL_POINTS, 0, self._n)
            GL.glBindVertexArray(0)
            GL.glUseProgram(0)
            red = self._read(w, h)
        finally:
            self._platform.make_uncurrent()
        return 255 - red if background == 255 else red

    def _read(self, w: int, h: int) -> np.ndarray:
        """The red channel of the lower-left ``w``×``h`` pixels, (h, w) uint8, row 0 at the top.
        OSMesa renders into the context's own buffer (rows bottom-up), complete after ``glFinish``:
        read there, without ``glReadPixels``."""
        from OpenGL import GL

        if not self._fbo:
            GL.glFinish()
            return np.array(np.asarray(self._platform._buffer)[:h][::-1, :w, 0])
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self._fbo)
        GL.glReadBuffer(GL.GL_COLOR_ATTACHMENT0)
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)
        red = np.empty((h, w), dtype=np.uint8)
        GL.glReadPixels(0, 0, w, h, GL.GL_RED, GL.GL_UNSIGNED_BYTE, red)
        return red[::-1].copy()

    def render(self, points: np.ndarray, grey: np.ndarray, mvp: np.ndarray, point_size: float,
               background: int) -> np.ndarray:
        """One draw in the whole window: (N, 3) ``points`` in (N,) uint8 ``grey`` levels over a
        black (0) or white (255) ``background`` (slot 0). Returns the (height, width) uint8 image."""
        self.set_positions(points)
        self.set_levels(0, grey, background)
        return self.draw(0, mvp, point_size, self.width, self.height)

    def delete(self) -> None:
        from OpenGL import GL

        self._platform.make_current()
        try:
            for program, _ in self._programs.values():
                GL.glDeleteProgram(program)
            GL.glDeleteBuffers(1 + len(self._slots), [self._positions] + [b for b, _ in self._slots.values()])
            GL.glDeleteVertexArrays(1, [self._vao])
            if self._fbo:
                GL.glDeleteFramebuffers(1, [self._fbo])
                GL.glDeleteRenderbuffers(len(self._renderbuffers), self._renderbuffers)
        finally:
            self._platform.make_uncurrent()
        self._programs, self._slots = {}, {}
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
