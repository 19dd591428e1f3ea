"""``--style pointad``'s resize to 336² against PIL's own bicubic resize (what the official scripts
call), bit for bit: dense random images (every weight of both axes at work), sparse renderings on
a background, content touching the borders (where PIL renormalizes the clipped taps), upscaling,
and the renderings of a real sample."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.render import bicubic

SIZE = (336, 336)


@pytest.mark.parametrize("shape", [(1024, 1024), (1036, 1036), (1000, 1003), (337, 900), (200, 150)])
def test_dense_images_equal_pil(shape):
    rng = np.random.default_rng(sum(shape))
    for background in (0, 255, 17):
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        mine = bicubic.resize_bicubic_numpy(image, SIZE, background)
        assert mine is not None
        np.testing.assert_array_equal(mine, bicubic.resize_bicubic_pil(image, SIZE))


@pytest.mark.parametrize("where", ["middle", "top_left", "bottom_right", "one_pixel", "empty"])
def test_content_on_a_background_equals_pil(where):
    rng = np.random.default_rng(7)
    for background in (0, 255):
        image = np.full((1036, 1036), background, dtype=np.uint8)
        patch = rng.integers(0, 256, size=(150, 90), dtype=np.uint8)
        if where == "middle":
            image[400:550, 600:690] = patch
        elif where == "top_left":
            image[:150, :90] = patch
        elif where == "bottom_right":
            image[-150:, -90:] = patch
        elif where == "one_pixel":
            image[517, 3] = 255 - background
        out = bicubic.resize_bicubic(image, SIZE, background)
        np.testing.assert_array_equal(out, bicubic.resize_bicubic_pil(image, SIZE))
        if where == "empty":
            assert (out == background).all()


def test_weights_keep_a_constant_and_sum_to_one_in_fixed_point():
    for n in (1024, 1036, 200):
        first, taps, k = bicubic.fixed_point_weights(n, 336)
        assert (first >= 0).all() and (first + taps <= n).all()
        assert np.abs(k.sum(axis=1) - (1 << bicubic.PRECISION_BITS)).max() <= k.shape[1]
        for value in (0, 1, 128, 254, 255):
            assert bicubic.keeps_constant(n, 336, value)
    # the renderings' sizes take the numpy path with this PIL (else every resize falls back to PIL)
    assert bicubic.matches_pil((1024, 1024), SIZE) and bicubic.matches_pil((1036, 1036), SIZE)


def test_a_samples_renderings_resize_as_pil_does():
    """Every image and ground-truth rendering of a fixture sample, through pad's resize."""
    import pathlib

    import pipeline.render.pointad as pointad
    from pipeline.ingest import discover
    from pipeline.ingest.pointad import load_pointad_sample

    fixture = pathlib.Path(__file__).parent / "fixtures" / "pointad" / "input" / "mvtec3d"
    fmt, refs = discover(str(fixture))
    sample = load_pointad_sample(refs[0], 0)
    seen = []
    real = bicubic.resize_bicubic

    def spy(image, size, background):
        out = real(image, size, background)
        seen.append((image.copy(), out))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bicubic, "resize_bicubic", spy)
        script = pointad.script_for(fmt)
        size, _ = pointad.point_size_for(script, sample.cls, None)
        labels = np.zeros(len(sample.points), dtype=np.uint8)
        labels[: len(labels) // 7] = 1                          # a ground truth in every view
        pointad.render_views(sample.points, labels, script, size)
    assert len(seen) >= 10
    for image, out in seen:
        np.testing.assert_array_equal(out, bicubic.resize_bicubic_pil(image, SIZE))
