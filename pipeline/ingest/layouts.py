"""Dataset layouts: detect which one a directory holds and list its samples (without reading them).

Layouts (``<class>`` = one directory per object class under the dataset root):

- ``mvtec3d`` (MVTec 3D-AD) and ``eyecandies`` (Eyecandies converted to the MVTec layout):
  ``<class>/{train,validation,test}/<defect>/{xyz/<stem>.tiff, rgb/<stem>.png, gt/<stem>.png}``
  (a split may also hold ``xyz/`` directly). Detected as ``eyecandies`` when every class
  name is an Eyecandies category (case, ``_`` and ``-`` ignored), else ``mvtec3d``.
- ``real3d`` (Real3D-AD): ``<class>/train/*.pcd``, ``<class>/test/*.pcd``, ``<class>/gt/<stem>.txt``.
- ``shapenet`` (Anomaly-ShapeNet): the same with ``<class>/GT/<stem>.txt``.
- ``generic``: ``<class>/{train,test}/<name>.{ply,pcd,npy,npz,xyz,txt}``, labels inside the files,
  or meshes ``<name>.{obj,stl,off,glb}`` (and ``.ply`` with faces), whose surface is sampled.

Splits are normalized to ``train`` and ``test``: a ``validation`` (or ``val``) directory holds
normal samples and counts as ``train``; its samples get the stem ``val_<stem>``. MVTec test
samples get the stem ``<defect>_<stem>`` (``good_000``, ``hole_000``), so every
``id = <class>/<split>/<stem>`` is unique. Directories under the root without any split
directory (``license/``, ``__MACOSX/``) are not classes and are ignored.
"""
from __future__ import annotations

import dataclasses
import os
import re

from data_cache.errors import PadError
from pipeline.sample import SampleRef

from .inputs import ORGANIZED_EXTENSIONS, POINT_EXTENSIONS, check_input_dir

FORMATS = ("mvtec3d", "eyecandies", "real3d", "shapenet", "generic")
EYECANDIES_CLASSES = ("CandyCane", "ChocolateCookie", "ChocolatePraline", "Confetto", "GummyBear",
                      "HazelnutTruffle", "LicoriceSandwich", "Lollipop", "Marshmallow", "PeppermintCandy")
#: split directory -> (normalized split, stem prefix)
SPLIT_DIRS = {"train": ("train", ""), "validation": ("train", "val_"), "val": ("train", "val_"),
              "test": ("test", "")}
SPLITS = ("train", "test")
LAYOUTS = {
    "mvtec3d": "<class>/{train,validation,test}/<defect>/xyz/*.tiff (+ rgb/*.png, gt/*.png)",
    "eyecandies": "<class>/{train,validation,test}/<defect>/xyz/*.tiff (+ rgb/*.png, gt/*.png), "
                  "Eyecandies class names",
    "real3d": "<class>/{train,test}/*.pcd + <class>/gt/<stem>.txt",
    "shapenet": "<class>/{train,test}/*.pcd + <class>/GT/<stem>.txt",
    "generic": "<class>/{train,test}/*.{ply,pcd,npy,npz,xyz,txt,obj,stl,off,glb}",
}
_TIFF = ORGANIZED_EXTENSIONS
_IMAGES = (".png", ".jpg", ".jpeg")


def _expected(fmt: str | None = None) -> str:
    if fmt is not None:
        return f"expected the {fmt} layout {LAYOUTS[fmt]}"
    return "expected one of: " + "; ".join(f"{name} {LAYOUTS[name]}" for name in ("mvtec3d", "real3d", "shapenet",
                                                                                  "generic"))


def _unreadable(path: str) -> PadError:
    return PadError("cannot list the directory: permission denied (pad would miss the samples in it)", path=path)


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir() and not e.name.startswith((".", "__")))
    except PermissionError:
        raise _unreadable(path) from None
    except OSError:
        return []


def _files(path: str, extensions: tuple[str, ...]) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_file() and not e.name.startswith(".")
                          and os.path.splitext(e.name)[1].lower() in extensions)
    except PermissionError:
        raise _unreadable(path) from None
    except OSError:
        return []


def _companion(directory: str, stem: str, extensions: tuple[str, ...]) -> str | None:
    for ext in extensions:
        candidate = os.path.join(directory, stem + ext)
        if os.path.isfile(candidate):
            return candidate
    return None


def organized_companion(xyz_path: str, role: str) -> str | None:
    """The ``role`` file ("rgb" or "gt") beside an organized sample's ``xyz/NAME.tiff``
    (``rgb/NAME.png`` and so on, as the MVTec 3D-AD / Eyecandies layouts keep them), or None."""
    group = os.path.dirname(os.path.dirname(xyz_path))
    return _companion(os.path.join(group, role), os.path.splitext(os.path.basename(xyz_path))[0], _IMAGES)


def _norm_name(name: str) -> str:
    return re.sub(r"[_\-\s]", "", name).lower()


def _organized_groups(split_dir: str) -> list[tuple[str | None, str]]:
    """(defect or None, directory holding xyz/) under one split directory."""
    groups: list[tuple[str | None, str]] = []
    if os.path.isdir(os.path.join(split_dir, "xyz")):
        groups.append((None, split_dir))
    for defect in _subdirs(split_dir):
        if defect != "xyz" and os.path.isdir(os.path.join(split_dir, defect, "xyz")):
            groups.append((defect, os.path.join(split_dir, defect)))
    return groups


def _class_evidence(class_dir: str) -> tuple[str | None, set[str]]:
    """(format this class proves, formats whose reader can read it); (None, set()) if not a class."""
    subs = set(_subdirs(class_dir))
    splits = [s for s in SPLIT_DIRS if s in subs]
    if not splits:
        return None, set()
    if any(_organized_groups(os.path.join(class_dir, s)) for s in splits):
        return "organized", {"mvtec3d", "eyecandies"}
    has_pcd = any(_files(os.path.join(class_dir, s), (".pcd",)) for s in ("train", "test") if s in subs)
    if has_pcd and "GT" in subs:
        return "shapenet", {"shapenet"}
    if has_pcd and "gt" in subs:
        return "real3d", {"real3d"}
    files = [f for s in splits for f in _files(os.path.join(class_dir, s), POINT_EXTENSIONS)]
    if not files:
        return None, set()
    if all(f.lower().endswith(".pcd") for f in files) and all(s in ("train", "test") for s in splits):
        return None, {"generic", "real3d", "shapenet"}
    return None, {"generic"}


def _detect(root: str, classes: list[str], explicit: bool) -> tuple[str, list[str]]:
    """(format, classes that hold it) for ``fmt="auto"``; ``explicit``: the user named ``classes``."""
    found = {c: _class_evidence(os.path.join(root, c)) for c in classes}
    recognized = [c for c in classes if found[c][1]]
    unknown = [c for c in classes if not found[c][1]]
    if explicit and unknown and recognized:
        raise PadError(f"class directory {', '.join(unknown)} holds no recognizable layout; {_expected()}",
                       path=root)
    if not recognized:
        hint = ""
        if any(s in SPLIT_DIRS for s in _subdirs(root)):
            hint = " (it looks like a single class directory: pass its parent directory)"
        raise PadError(f"no dataset layout recognized{hint}; {_expected()}", path=root)
    common = set.intersection(*(found[c][1] for c in recognized))
    evidence = {found[c][0] for c in recognized} - {None}
    if not common:
        described = ", ".join(f"{c}: {found[c][0] or '/'.join(sorted(found[c][1]))}" for c in recognized)
        raise PadError(f"classes use different layouts ({described}); pass --format or select classes", path=root)
    if "organized" in evidence:
        names = {_norm_name(n) for n in EYECANDIES_CLASSES}
        fmt = "eyecandies" if all(_norm_name(c) in names for c in recognized) else "mvtec3d"
    elif evidence:
        fmt = evidence.pop()
    else:
        fmt = "generic"
    return fmt, recognized


def _list_organized(root: str, cls: str, fmt: str) -> list[SampleRef]:
    refs = []
    for split_name in _subdirs(os.path.join(root, cls)):
        if split_name not in SPLIT_DIRS:
            continue
        split, prefix = SPLIT_DIRS[split_name]
        for defect, group in _organized_groups(os.path.join(root, cls, split_name)):
            for name in _files(os.path.join(group, "xyz"), _TIFF):
                stem = os.path.splitext(name)[0]
                if split == "test":
                    sid = f"{defect}_{stem}" if defect else stem
                else:
                    sid = prefix + (f"{defect}_{stem}" if defect and defect != "good" else stem)
                path = os.path.join(group, "xyz", name)
                extra = tuple((role, p) for role in ("gt", "rgb")
                              if (p := organized_companion(path, role)) is not None)
                refs.append(SampleRef(id=f"{cls}/{split}/{sid}", cls=cls, split=split, path=path, format=fmt,
                                      extra=extra))
    return refs


def _list_pcd_gt(root: str, cls: str, fmt: str) -> list[SampleRef]:
    gt_dir = os.path.join(root, cls, "GT" if fmt == "shapenet" else "gt")
    refs = []
    for split in SPLITS:
        directory = os.path.join(root, cls, split)
        for name in _files(directory, (".pcd",)):
            stem = os.path.splitext(name)[0]
            gt = _companion(gt_dir, stem, (".txt",)) if split == "test" else None
            refs.append(SampleRef(id=f"{cls}/{split}/{stem}", cls=cls, split=split,
                                  path=os.path.join(directory, name), format=fmt,
                                  extra=(("gt", gt),) if gt else ()))
    return refs


def _list_generic(root: str, cls: str, fmt: str) -> list[SampleRef]:
    refs = []
    for split_name in _subdirs(os.path.join(root, cls)):
        if split_name not in SPLIT_DIRS:
            continue
        split, prefix = SPLIT_DIRS[split_name]
        directory = os.path.join(root, cls, split_name)
        for name in _files(directory, POINT_EXTENSIONS):
            refs.append(SampleRef(id=f"{cls}/{split}/{prefix}{os.path.splitext(name)[0]}", cls=cls, split=split,
                                  path=os.path.join(directory, name), format=fmt))
    return refs


_LISTERS = {"mvtec3d": _list_organized, "eyecandies": _list_organized, "real3d": _list_pcd_gt,
            "shapenet": _list_pcd_gt, "generic": _list_generic}


def normalize_splits(splits: list[str] | None) -> tuple[str, ...]:
    """``["test", "validation"]`` -> ``("train", "test")`` order-free; None -> both. PadError on others."""
    if splits is None:
        return SPLITS
    out = set()
    for s in splits:
        if s not in SPLIT_DIRS:
            raise PadError(f"unknown split {s!r}; expected train or test (validation counts as train)")
        out.add(SPLIT_DIRS[s][0])
    return tuple(s for s in SPLITS if s in out)


def discover(root: str, fmt: str = "auto", classes: list[str] | None = None,
             splits: list[str] | None = None, mesh_points: int | None = None) -> tuple[str, list[SampleRef]]:
    """Find the samples of a dataset directory without reading any point data.

    ``fmt`` is one of :data:`FORMATS` or ``"auto"`` (detect it; see the module doc for the
    rules). ``classes``: only these class directories (PadError naming the available ones
    for an unknown name). ``splits``: ``"train"``/``"test"`` (``"validation"``/``"val"``
    mean ``"train"``: MVTec's validation samples are normal and count as train).

    ``mesh_points``: points drawn on each mesh of the generic layout (recorded in its ref; None: the
    default).

    Returns ``(format, refs)`` with refs sorted by id and absolute paths. PadError, naming the directory and
    the expected layout, when it is missing, a file, unreadable, holds no recognizable layout, or no samples.
    """
    root = os.path.abspath(os.fspath(root))  # refs carry absolute paths (Dask workers may run elsewhere)
    check_input_dir(root, "dataset directory")
    if fmt != "auto" and fmt not in FORMATS:
        raise PadError(f"unknown dataset format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    wanted_splits = normalize_splits(splits)
    available = _subdirs(root)
    if classes is not None:
        missing = [c for c in classes if c not in available]
        if missing:
            raise PadError(f"no class directory {', '.join(missing)} (classes here: "
                           f"{', '.join(available) or 'none'})", path=root)
        selected = list(dict.fromkeys(classes))
    else:
        selected = available
    if fmt == "auto":
        fmt, selected = _detect(root, selected, explicit=classes is not None)
    refs = [r for c in selected for r in _LISTERS[fmt](root, c, fmt) if r.split in wanted_splits]
    if mesh_points is not None:
        refs = [dataclasses.replace(r, mesh_points=int(mesh_points)) for r in refs]
    if not refs:
        raise PadError(f"no samples found (splits: {', '.join(wanted_splits)}); {_expected(fmt)}", path=root)
    refs.sort(key=lambda r: r.id)
    for a, b in zip(refs, refs[1:]):
        if a.id == b.id:
            raise PadError(f"two files map to the sample id {a.id}: {a.path} and {b.path}; rename one", path=root)
    return fmt, refs
