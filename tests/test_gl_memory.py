"""The renderers of one process do not grow: after the first scan, drawing the same kind of
scan again compiles no shader program and keeps the resident memory flat (pyrender's own
program cache missed on every draw under OSMesa/EGL and grew a worker by megabytes a scan; see
:func:`pipeline.render.gl.program_cache`). Measured in a fresh process, so that nothing else
this test session holds moves the figure. And no shader file of pad's stays in the temporary
directory while the renderers live (they are written only while a program compiles)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANS = 200
MB_PER_SCAN = 0.1   # the unfixed cache grew by ~2.5 MB per scan of these three views

CODE = """
import glob, json, os, sys, tempfile
import numpy as np
from pipeline.render.cameras import make_cameras
from pipeline.render.gl import get_point_renderer, get_renderer
from trainer.memory import resident_mb

scans, platform = int(sys.argv[1]), sys.argv[2]
cams = make_cameras("3", 32)
splats, points = get_renderer(32, 32, platform), get_point_renderer(32, 32, platform)
rng = np.random.default_rng(0)
verts = (rng.random((600, 3)) - 0.5).astype(np.float32)
normals = np.tile(np.float32([0, 0, 1]), (600, 1))
faces = (np.arange(599 * 3).reshape(-1, 3) % 600).astype(np.uint32)
grey = rng.integers(0, 255, 600).astype(np.uint8)

def programs():
    return (len(splats._offscreen._renderer._program_cache._program_cache)
            + len(points._programs))

def scan():
    splats.set_mesh(verts, normals, faces)
    for cam in cams:
        splats.render(cam)
    splats.clear()
    points.render(verts, grey, np.eye(4, dtype=np.float32), 2.0, 255)

for _ in range(10):
    scan()
warm = (programs(), resident_mb())
for _ in range(scans):
    scan()
left = glob.glob(os.path.join(tempfile.gettempdir(), "pad-*"))     # while the renderers live
print(json.dumps({"programs": [warm[0], programs()], "mb": [warm[1], resident_mb()], "left": left}))
"""


def test_drawing_again_compiles_nothing_and_memory_stays_flat(tmp_path):
    platform = os.environ.get("PYOPENGL_PLATFORM", "osmesa")      # egl on a GPU machine
    env = dict(os.environ, PYOPENGL_PLATFORM=platform, PYTHONPATH=ROOT, TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", CODE, str(SCANS), platform], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    before, after = figures["programs"]
    assert before == after, f"{after - before} shader programs compiled again in {SCANS} scans"
    grown = figures["mb"][1] - figures["mb"][0]
    assert grown < MB_PER_SCAN * SCANS, f"resident memory grew {grown:.1f} MB over {SCANS} scans"
    # shader files exist only while a program compiles: a stop of any kind leaves none behind
    assert figures["left"] == [] and list(tmp_path.iterdir()) == []
