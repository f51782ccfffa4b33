"""The package's top level: every public name resolves and is documented."""

from __future__ import annotations

import numpy as np


def test_every_public_name_resolves_and_is_documented():
    import jaxguide

    for name in jaxguide.__all__:
        obj = getattr(jaxguide, name)
        assert (getattr(obj, "__doc__", None) or "").strip(), name


def test_images_are_saved_from_the_top_level_api(tmp_path):
    """jaxguide.save_grid and jaxguide.save_gif are viz's (imported on first use)."""
    import jaxguide
    from jaxguide import viz

    assert jaxguide.save_grid is viz.save_grid and jaxguide.save_gif is viz.save_gif
    assert {"save_grid", "save_gif"} <= set(jaxguide.__all__)
    images = np.zeros((2, 28, 28, 1), np.float32)
    assert viz.made_here(jaxguide.save_grid(images, [0, 1], tmp_path / "grid.png", ncol=2))
    assert viz.made_here(jaxguide.save_gif(images[None], tmp_path / "t.gif", ncol=2))
