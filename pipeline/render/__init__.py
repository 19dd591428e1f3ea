"""The per-sample render kernel of ``pad render`` (orchestrated by
:mod:`pipeline.render_job`).

Public API::

    settings = RenderSettings.from_config(cfg)                 # pipeline.options.RenderConfig
    cameras = make_cameras(resolve_views(cfg.views, one_sided), settings.image_size)
    attrs = store_attrs(settings, fmt, root, one_sided)         # render store group attributes
    out = render_sample(sample, settings, cameras)              # RenderedSample

Modules: ``cameras`` (view sets, matrices), ``projection`` (point → pixel),
``normals`` (PCA + orientation), ``surfels`` (splat mesh, splat size), ``shaders`` +
``gl`` (offscreen pyrender renderer, one per process), ``visibility`` (depth-buffer
visibility, 2D ground truth), ``kernel`` (:func:`render_sample`), ``threads`` (the threads a
sample may use in a render worker, and their pool).

Importing this package does not import OpenGL: the platform (OSMesa/EGL) is
chosen when the first renderer is created (:func:`pipeline.render.gl.configure_platform`).
"""
from pipeline.render.cameras import make_cameras, resolve_views
from pipeline.render.kernel import render_sample
from pipeline.render.rendered import RenderedSample
from pipeline.render.settings import RenderSettings, store_attrs

__all__ = ["RenderSettings", "RenderedSample", "make_cameras", "render_sample", "resolve_views",
           "store_attrs"]
