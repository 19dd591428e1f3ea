"""Options of the pipeline commands (synth, inspect, render, show, extract-features).

One dataclass per command: the single source of truth for defaults and help;
``cli.py`` derives the click options from these fields.
"""
from __future__ import annotations

from dataclasses import dataclass

from data_cache.options import option

#: ``--mesh-points``, shared by every command that reads meshes: points drawn on a mesh's surface.
#: 20 000 is within the range of the scans of the public datasets pad reads (tens of thousands of
#: points per cloud), dense enough that neighbouring splats touch in the default 336-pixel views,
#: and light to render: under a second for 9 views at 336 px on one CPU core (a sampled box mesh,
#: renderer warm, measured 0.65-0.9 s).
MESH_POINTS = 20000
MESH_POINTS_HELP = ("Points drawn on the surface of each mesh (.obj .stl .off .glb, .ply with faces): "
                    "area-weighted, seeded, the same cloud every time; point files are read as they are.")

DATASET_FORMATS = ("auto", "mvtec3d", "eyecandies", "real3d", "shapenet", "generic")


@dataclass
class SynthConfig:
    """``pad synth OUT``: write the built-in procedural dataset (OUT/<class>/{train,test}/*.ply,
    binary PLY with x y z nx ny nz label, plus OUT/synth.json), or add synthetic anomalies
    (bulge, concavity, hole, crack, scratch) to the user's own normal clouds (``--from``): every
    directory of NORMAL_DIR holding point or mesh files is one product, OUT/<product>/train holds
    its inputs as read (rewritten as PLY with labels 0: rows with NaN/Inf coordinates dropped,
    normals estimated when missing, meshes sampled), OUT/<product>/test moved, resampled and
    jittered copies of them (at least ``--per-class``), about ``--anomaly-ratio`` of them with a
    defect."""
    out: str = option(help="Output dataset directory (generic layout).", argument=True)
    from_dir: str | None = option(None, "Directory of the user's own normal clouds (.ply .pcd .npy .npz .xyz "
                                        ".txt) or meshes (.obj .stl .off .glb): each directory in it that "
                                        "holds such files is one product (files directly in it: a product "
                                        "named after it); anomalies are synthesized on moved copies of them "
                                        "instead of procedural shapes.",
                                  metavar="NORMAL_DIR")
    n_classes: int = option(6, "Number of procedural object classes, at most 9 (ignored with --from).")
    per_class: int = option(8, "Samples per class and split (test split: about --anomaly-ratio anomalous); "
                               "with --from, the least number of test copies per product.")
    points: int = option(8000, "Points per procedural cloud (varied ±25% per sample; ignored with --from).")
    anomaly_ratio: float = option(0.5, "Fraction of test samples (per class or product) that get an anomaly.")
    seed: int = option(0, "Random seed: the same seed writes the same bytes.")
    mesh_points: int = option(MESH_POINTS, MESH_POINTS_HELP + " With --from only.")


@dataclass
class InspectConfig:
    """``pad inspect DATASET_DIR``: what ingestion finds, per class and split."""
    dataset: str = option(help="Dataset directory.", argument=True)
    format: str = option("auto", "Dataset layout.", choices=DATASET_FORMATS)
    json: bool = option(False, "Print JSON instead of a table.")
    mesh_points: int = option(MESH_POINTS, MESH_POINTS_HELP)


@dataclass
class RenderConfig:
    """``pad render DATASET_DIR --cache CACHE``: multi-view renderings, 2D ground truth,
    point→pixel maps, visibility and kNN graphs into ``CACHE/render.zarr``."""
    dataset: str = option(help="Dataset directory.", argument=True)
    cache: str = option(help="Cache directory (local path, shared path or fsspec URL).")
    format: str = option("auto", "Dataset layout.", choices=DATASET_FORMATS)
    views: str = option("default", "Camera set: default (scan for one-sided datasets, paper otherwise), "
                                   "paper (9 rotations about X), scan (5 about X, 4 about Y), or a number N "
                                   "of views spread over the sphere.", metavar="default|paper|scan|N")
    image_size: int = option(336, "Output image side in pixels.")
    supersample: int = option(2, "Render at this multiple of --image-size, then downsample (anti-aliasing).")
    point_size: str = option("auto", "Splat half-size: auto (from the local point spacing) or a size in "
                                     "output pixels. With --style pointad: the point size in window pixels "
                                     "of classes outside the official scripts' tables (auto: the layout's "
                                     "default).", metavar="auto|PX")
    knn: int = option(10, "Neighbours per point in the stored kNN graph.")
    style: str = option("pad", "pad: pad's renderer (oriented surfels, for prompts trained with pad); pointad: "
                               "exactly what the official PointAD scripts render (Open3D points, their views "
                               "and sizes, 336 px), for official checkpoints and the papers' numbers.",
                        choices=("pad", "pointad"))
    seed: int = option(0, "Seed of the random draws the official scripts leave unseeded (--style pointad: "
                          "the MVTec 3D-AD plane fit, Real3D-AD resampling).")
    classes: str | None = option(None, "Only these classes (comma-separated).", metavar="a,b")
    splits: str = option("test,train", "Splits to render (comma-separated).")
    workers: int = option(0, "LocalCluster worker processes (0: one per core).")
    scheduler: str | None = option(None, "Address of an existing Dask scheduler (tcp://host:8786) instead "
                                         "of a LocalCluster.", metavar="ADDRESS")
    on_error: str = option("fail", "On a bad sample: fail (stop, exit 2, store stays valid) or skip "
                                   "(record it and render the rest).", choices=("fail", "skip"))
    backend: str = option("auto", "OpenGL platform: auto (EGL with a GPU, else OSMesa; --style pointad "
                                  "without a GPU draws its points in numpy, as llvmpipe does), osmesa or egl.",
                          choices=("auto", "osmesa", "egl"))
    no_worker_timeout: float = option(120.0, "Seconds to wait while the cluster has no worker (all gone, or "
                                             "none started yet with --scheduler) before stopping with exit 2; "
                                             "a rerun resumes.", metavar="SECONDS")
    mesh_points: int = option(MESH_POINTS, MESH_POINTS_HELP + " Part of a mesh sample's identity: another "
                                           "value renders the mesh samples again.")


@dataclass
class ShowConfig:
    """``pad show --cache CACHE --sample ID --out FILE.png``: contact sheet of one sample's views
    with the 2D ground truth outlined; with --3d also FILE.html, an interactive 3D view of the
    cached cloud."""
    cache: str = option(help="Cache directory.")
    sample: str = option(help="Sample id (<class>/<split>/<stem>) or index.")
    out: str = option(help="Output PNG file.")
    three_d: bool = option(False, "Also write FILE.html beside the PNG: an interactive 3D view of the cloud "
                                  "(rotate, zoom, pan; coloured by how many views see each point; buttons show "
                                  "the ground-truth points) next to the contact sheet; opens offline, its "
                                  "scripts are in assets/ beside it.", flag="3d")
    view_points: int = option(50000, "At most this many points in the 3D view (larger clouds show an even, "
                                     "seeded sample).")


@dataclass
class ExtractConfig:
    """``pad extract-features --cache CACHE``: run the frozen CLIP encoder (with DPAM) once
    over every rendering and cache global and patch embeddings in HDF5."""
    cache: str = option(help="Cache directory holding render.zarr.")
    backbone: str = option("ViT-L-14-336", "Backbone: pad-tiny, ViT-B-16, ViT-L-14-336 (the CLIP registry), or any "
                                           "other open_clip ViT name; point-mae or dino-vitb8 for MuSc-V2's "
                                           "training-free scoring: token stores of its point branch "
                                           "(Point-MAE) or RGB branch (DINO ViT-B/8, datasets with RGB).")
    pretrained: str = option("auto", "Weights: auto (the backbone's own default: openai for the CLIP "
                                     "backbones, random for pad-tiny, point-mae and dino-vitb8), an open_clip "
                                     "pretrained tag, a local checkpoint file (point-mae: Point-MAE's pretrain.pth; "
                                     "dino-vitb8: dino_vitbase8_pretrain.pth), or 'random' (seeded random weights, "
                                     "for timing and tests).",
                             metavar="auto|openai|PATH|random")
    layers: str = option("24", "Blocks whose patch tokens are stored (comma-separated, 1-based); "
                               "for backbones of other depths, scaled. point-mae and dino-vitb8 always store "
                               "blocks 4,8,12, as MuSc-V2.", metavar="24|6,12,18,24")
    dpam_layers: int = option(20, "DPAM depth as in the reference (DPAM_layer=20 rewires the last 19 of "
                                  "24 blocks; scaled for other depths; 0 disables).")
    batch_size: int = option(8, "Images per forward pass (with --workers or --scheduler: one sample's images "
                                "per pass, whatever this says).")
    device: str = option("auto", "Torch device.", choices=("auto", "cpu", "cuda"))
    precision: str = option("fp32", "Compute precision.", choices=("fp32", "fp16", "bf16"))
    seed: int = option(0, "Seed for --pretrained random.")
    point_mae_mode: str = option("eval", "point-mae: eval (BatchNorm running statistics, no DropPath: deterministic "
                                         "inference) or train (what the official MuSc-V2 code runs: each scan's own "
                                         "BatchNorm statistics, DropPath drawn from --seed and the sample index).",
                                 choices=("eval", "train"))
    n_groups: int = option(1024, "point-mae: group centres per scan (farthest point sampling); MuSc-V2: 1024. "
                                 "A scan with fewer input points is refused.")
    group_size: int = option(128, "point-mae: points per group (Iterative Point Grouping); MuSc-V2: 128, with "
                                  "256 neighbours searched and groups grown by 80 (scaled with it).")
    workers: int = option(0, "Encode on a LocalCluster of this many worker processes (with CUDA, worker k uses "
                             "GPU k modulo the GPU count); 0: in this process, no Dask.")
    scheduler: str | None = option(None, "Address of an existing Dask scheduler (tcp://host:8786): its workers "
                                         "encode, each writing shards of its own that this process merges.",
                                   metavar="ADDRESS")
    task_samples: int = option(8, "With --workers or --scheduler: samples per Dask task (one shard each).")
    no_worker_timeout: float = option(120.0, "With --workers or --scheduler: seconds to wait while the cluster has "
                                             "no worker before stopping with exit 2; a rerun resumes.",
                                      metavar="SECONDS")
