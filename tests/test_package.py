"""The package's top level: every public name resolves and is documented."""

from __future__ import annotations

import ast
from pathlib import Path

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


# MNIST's sizes belong to its spec in data.DATASETS. The tutorial's ported denoiser is
# MNIST's by construction (its weights fix 28×28×1), so it is left out.
MNIST_PORTS = {"jaxguide/nets/seed_unet.py"}


def _named_constants(tree):
    """(name, constant node) of keywords, assignments and defaults: `num_classes=10`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg:
            yield node.arg, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            yield node.target.id, node.value
        elif isinstance(node, ast.Assign):
            yield from ((t.id, node.value) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args
            yield from zip((a.arg for a in args[len(args) - len(node.args.defaults):]),
                           node.args.defaults)
            yield from ((a.arg, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults)
                        if d is not None)


def mnist_sizes(source: str) -> list[str]:
    """Where `source` hard-codes MNIST: the literals 28 or 784, ten classes (a name with
    "class" set to 10) or one channel (a name ending in "channels" set to 1), outside an
    assignment to DATASETS."""
    tree = ast.parse(source)
    spec = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DATASETS"
                                                for t in node.targets):
            spec |= set(range(node.lineno, node.end_lineno + 1))
    found = [f"{n.lineno}: {n.value}" for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and type(n.value) is int and n.value in (28, 784)]
    for name, value in _named_constants(tree):
        if isinstance(value, ast.Constant) and type(value.value) is int and (
                ("class" in name.lower() and value.value == 10)
                or (name.lower().endswith("channels") and value.value == 1)):
            found.append(f"{value.lineno}: {name}={value.value}")
    return [f for f in found if int(f.split(":")[0]) not in spec]


def test_nothing_hard_codes_mnist_outside_its_spec():
    """Shapes and class counts come from a dataset's spec (issue 21), in the library and CLIs."""
    bad = "x = jnp.zeros((1, 28, 28, 1))\ndef f(num_classes=10, in_channels=1): pass\n"
    assert len(mnist_sizes(bad)) == 4
    assert mnist_sizes("DATASETS = {'mnist': ((28, 28, 1), 10)}\n") == []
    root = Path(__file__).parents[1]
    files = sorted(root.glob("jaxguide/**/*.py")) + [root / "sample.py", root / "train.py"]
    found = {p.relative_to(root).as_posix(): mnist_sizes(p.read_text()) for p in files}
    assert {p: f for p, f in found.items() if f and p not in MNIST_PORTS} == {}
