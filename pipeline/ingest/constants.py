"""Tolerances and limits of ingestion, in one place.

Distances are in the data's own units (MVTec 3D-AD and Eyecandies store metres).
"""
from __future__ import annotations

from pipeline.options import MESH_POINTS as _OPTIONS_MESH_POINTS

# --- background plane removal (organized clouds: MVTec 3D-AD, Eyecandies) -------------------
#: Points closer than this to the fitted background plane are dropped (as in "Back to the
#: Feature", Horwitz & Hoshen 2023, which uses 0.005 on MVTec 3D-AD).
PLANE_DISTANCE = 0.005
#: Candidate planes drawn at once by the vectorized RANSAC.
PLANE_CANDIDATES = 512
#: Points on which every candidate is scored (a random subset of the candidate pool).
PLANE_SCORE_POINTS = 4096
#: Width of the image border strip, as a fraction of min(H, W), where the candidate planes
#: are drawn and scored: the background shows there, the object sits in the middle.
PLANE_BORDER_FRACTION = 0.1
#: The support is looked for only when the border strip holds at least this many valid points...
PLANE_MIN_BORDER_POINTS = 64
#: ...and at least this fraction of its pixels hold a measurement: the support fills the view of
#: a raw scan, while a scan whose background was removed already has a zero border (at most the
#: object touches it). Without support the cloud is kept whole.
PLANE_MIN_BORDER_COVERAGE = 0.5
#: A plane is removed only when at least this fraction of the pool lies on it; otherwise the
#: cloud is kept whole and the sample gets a warning.
PLANE_MIN_INLIER_FRACTION = 0.3
#: Seed of the plane RANSAC (ingestion is deterministic).
PLANE_SEED = 0

# --- ground-truth files of Real3D-AD / Anomaly-ShapeNet -------------------------------------
#: A gt point agrees with its .pcd point when every coordinate differs by at most
#: GT_MATCH_ATOL + GT_MATCH_RTOL * (bounding-box diagonal).
GT_MATCH_ATOL = 1e-4
GT_MATCH_RTOL = 1e-6
#: Fraction of points that must agree (in file order, or else after sorting both sets).
GT_MATCH_FRACTION = 0.99

# --- memory guards ---------------------------------------------------------------------------
#: Most bytes LZF can expand to per compressed byte (a 3-byte back-reference copies at most
#: 264 bytes), with margin: a binary_compressed PCD declaring more is refused before reading.
LZF_MAX_RATIO = 100
#: Most bytes a compressed TIFF or NPZ member may expand to per stored byte.
MAX_COMPRESSION_RATIO = 1100
#: Fewest bytes an ASCII value takes ("0" plus a separator).
MIN_ASCII_VALUE_BYTES = 2
#: Most values per point a PCD header may declare (sum of COUNT; descriptors such as SHOT take 352):
#: checked before the record type is built, which has one field per value.
PCD_MAX_VALUES_PER_POINT = 65536

# --- what every command accepts as a cloud -------------------------------------------------
#: Fewest points a cloud may have in pad synth, pad render (and inspect) and pad predict, counted
#: after rows with a NaN/Inf coordinate are dropped: below it a cloud is refused with one line.
#: 64 is the fewest on which pad synth places a defect (a defect labels at least 8 points, see
#: pipeline.anomalies) and leaves the renderer's 10-neighbour kNN graph and 16-neighbour PCA
#: normals a neighbourhood that is a small part of the cloud, not all of it.
MIN_CLOUD_POINTS = 64

# --- meshes (.obj .stl .off .glb, .ply with faces) -----------------------------------------
#: Points drawn on a mesh's surface by default (--mesh-points); defined, and its choice explained,
#: with the options (pipeline.options), which import nothing heavy.
MESH_POINTS = _OPTIONS_MESH_POINTS
#: Most points --mesh-points may ask for (memory stays bounded whatever the option says).
MAX_MESH_POINTS = 10_000_000
#: Seed of the surface sampling: the same mesh gives the same cloud in every command.
MESH_SEED = 0
