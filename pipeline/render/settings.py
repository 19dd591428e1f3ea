"""Render settings (from ``pad render``'s options) and the render store's group
attributes they define."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from data_cache.errors import PadError
from pipeline.render.cameras import HALF_EXTENT, make_cameras, resolve_views
from pipeline.render.gl import BACKENDS

STYLES = ("pad", "pointad")
#: --supersample's default, which --style pointad requires (it does not supersample).
POINTAD_SUPERSAMPLE_UNSET = 2
NORMALIZATION = ("points_normalized = (points - center) / scale; center = centre of the axis-aligned "
                 "bounding box, scale = largest distance from center (the cloud fills the unit ball)")
MAX_IMAGE_SIZE = 4096
MAX_SUPERSAMPLE = 4
MAX_KNN = 64


@dataclass(frozen=True)
class RenderSettings:
    """What a render kernel needs besides the sample and the cameras.

    - ``image_size``: output side in pixels
    - ``supersample``: render at this multiple, then area-average down
    - ``views``: the ``--views`` value (``default``, ``paper``, ``scan`` or ``N``);
      the cameras themselves come from :func:`make_cameras`
    - ``point_size``: ``auto`` (splat half-size from the local spacing) or a
      half-size in output pixels (a number as a string)
    - ``knn``: neighbours per point in the stored kNN graph
    - ``backend``: OpenGL platform ``auto``/``osmesa``/``egl``
    - ``style``: ``pad`` (surfels, pad's cameras) or ``pointad`` (the official scripts'
      rendering, :mod:`pipeline.render.pointad`; then ``layout`` names the dataset format whose
      script is reproduced and ``seed`` seeds the draws the scripts leave unseeded)
    """
    image_size: int = 336
    supersample: int = 2
    views: str = "default"
    point_size: str = "auto"
    knn: int = 10
    backend: str = "auto"
    style: str = "pad"
    layout: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.style not in STYLES:
            raise PadError(f"--style must be one of {', '.join(STYLES)}, not '{self.style}'")
        if self.style == "pointad":
            self._check_pointad()
        if not 8 <= int(self.image_size) <= MAX_IMAGE_SIZE:
            raise PadError(f"--image-size {self.image_size}: must be between 8 and {MAX_IMAGE_SIZE}")
        if not 1 <= int(self.supersample) <= MAX_SUPERSAMPLE:
            raise PadError(f"--supersample {self.supersample}: must be between 1 and {MAX_SUPERSAMPLE}")
        if not 1 <= int(self.knn) <= MAX_KNN:
            raise PadError(f"--knn {self.knn}: must be between 1 and {MAX_KNN}")
        if self.backend not in BACKENDS:
            raise PadError(f"--backend must be one of {', '.join(BACKENDS)}, not '{self.backend}'")
        self.point_size_px  # validates
        if str(self.views).strip().lower() != "default":
            resolve_views(self.views, False)  # validates paper/scan/N

    def _check_pointad(self) -> None:
        """``--style pointad`` renders what the official scripts render: their image size, views
        and window rendering are fixed, so the options that choose them for ``--style pad``
        must keep their defaults."""
        from pipeline.render.pointad import OUTPUT_SIZE, script_for

        fixed = [(int(self.image_size), OUTPUT_SIZE, "--image-size"),
                 (str(self.views).strip().lower(), "default", "--views"),
                 (int(self.supersample), POINTAD_SUPERSAMPLE_UNSET, "--supersample")]
        for value, default, flag in fixed:
            if value != default:
                raise PadError(f"{flag} {value}: --style pointad renders as the official scripts do (9 fixed "
                               f"views, a window resized to {OUTPUT_SIZE} px); leave {flag} at its default "
                               f"({default})")
        if self.layout is not None:
            script_for(self.layout)

    @classmethod
    def from_config(cls, cfg, layout: str | None = None) -> "RenderSettings":
        """From a :class:`pipeline.options.RenderConfig` (or anything with the same fields);
        ``layout``: the dataset format, which picks the official script with ``--style pointad``."""
        return cls(image_size=int(cfg.image_size), supersample=int(cfg.supersample), views=str(cfg.views),
                   point_size=str(cfg.point_size), knn=int(cfg.knn), backend=str(cfg.backend),
                   style=str(getattr(cfg, "style", "pad")), layout=layout, seed=int(getattr(cfg, "seed", 0)))

    @property
    def point_size_px(self) -> float | None:
        """The explicit splat half-size in output pixels, or None for ``auto``."""
        text = str(self.point_size).strip().lower()
        if text == "auto":
            return None
        try:
            value = float(text)
        except ValueError:
            raise PadError(f"--point-size must be 'auto' or a size in pixels, not '{self.point_size}'") from None
        if not (math.isfinite(value) and 0.1 <= value <= 64):
            raise PadError(f"--point-size {value}: the splat half-size must be between 0.1 and 64 pixels")
        return value

    def as_dict(self) -> dict:
        return asdict(self)


def point_size_attr(settings: RenderSettings) -> str | float:
    """The ``point_size_px`` store attribute: the explicit half-size, or a string
    naming the automatic rule (so that changing the rule changes the fingerprint)."""
    from pipeline.render.surfels import SPACING_K, SPLAT_FACTOR

    px = settings.point_size_px
    if px is not None:
        return px
    return f"auto: half-size {SPLAT_FACTOR} x local spacing (from the distance to the {SPACING_K}th neighbour)"


def pointad_point_sizes(settings: RenderSettings, classes) -> dict[str, tuple[float, str]]:
    """Per class of ``classes``: (point size in window pixels, where it came from: ``script``,
    ``--point-size`` or ``default``) under ``--style pointad``."""
    from pipeline.render.pointad import point_size_for, script_for

    script = script_for(settings.layout)
    return {cls: point_size_for(script, cls, settings.point_size_px) for cls in sorted(set(classes))}


def _pointad_attrs(settings: RenderSettings, fmt: str, root: str) -> dict:
    from pipeline.render.pointad import GT_POINT_SIZE, GT_WINDOW, OUTPUT_SIZE, script_for

    script = script_for(fmt)
    explicit = settings.point_size_px
    return {
        "style": {"name": "pointad", "seed": int(settings.seed)},
        "image_size": OUTPUT_SIZE,
        "supersample": 1,
        "views": [{"name": f"{axis}{degrees:+g}", "axis": axis, "degrees": degrees}
                  for axis, degrees in script.views],
        "normalization": NORMALIZATION,
        "point_size_px": {"classes": dict(script.point_sizes), "other": explicit if explicit is not None
                          else script.default_point_size, "unit": "window pixels"},
        "knn_k": int(settings.knn),
        "source": {"format": str(fmt), "root": str(root)},
        "render": {
            "view_set": None,
            "script": script.name,
            "window": script.window,
            "gt_window": GT_WINDOW,
            "gt_point_size": GT_POINT_SIZE,
            "normals": f"Open3D estimate_normals, hybrid radius {script.normal_radius}, max_nn {script.normal_max_nn}",
        },
    }


def store_attrs(settings: RenderSettings, fmt: str, root: str, one_sided: bool) -> dict:
    """The render store's defining group attributes for these settings (see
    DESIGN.md): image_size, supersample, views (camera dicts), normalization,
    point_size_px, knn_k, source {format, root}; plus ``render`` (settings and
    rendering rules, informative)."""
    from pipeline.render.surfels import MAX_REL, MIN_REL
    from pipeline.render.visibility import COS_FLOOR, NOISE_TOL, VIS_TOL

    if settings.style == "pointad":
        return _pointad_attrs(settings, fmt, root)
    spec = resolve_views(settings.views, one_sided)
    return {
        "image_size": int(settings.image_size),
        "supersample": int(settings.supersample),
        "views": make_cameras(spec, settings.image_size),
        "normalization": NORMALIZATION,
        "point_size_px": point_size_attr(settings),
        "knn_k": int(settings.knn),
        "source": {"format": str(fmt), "root": str(root)},
        "render": {
            "view_set": spec,
            "splats": "one square per point in its tangent plane (PCA normals unless the file has normals); "
                      f"auto half-size clamped to [{MIN_REL}, {MAX_REL}] x the median spacing",
            "shading": "two-sided Lambert, grey albedo, directional light at the camera, white background; "
                       "area-averaged from supersample x resolution",
            "visibility": ("own splat is the front surface: |depth buffer - splat depth| <= "
                           f"max({VIS_TOL} x half-size, {NOISE_TOL} x local thickness / max(|cos|, {COS_FLOOR}))"),
            "gt2d": "pixels covered by the splats of visible anomalous points on the front surface",
            "ortho_half_extent": HALF_EXTENT,
        },
    }
