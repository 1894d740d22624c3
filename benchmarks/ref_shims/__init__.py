"""Helpers to run the reference ``learnware`` package's image spec in tests and benchmarks.

``torchvision`` is not installed here (its wheel does not load against this CPU torch), and the
reference's ``RKMEImageSpecification.generate_stat_spec_from_data`` imports it for one transform,
``transforms.Resize``. :func:`reference_image_class` imports the reference first (so that
``transformers``, which the reference's package may import, still sees no torchvision) and returns
it with ``generate_stat_spec_from_data`` run inside :func:`torchvision_shim`, which registers the
stand-in package ``ref_shims/torchvision`` (bilinear antialiased resize) under the name
``torchvision`` in ``sys.modules`` for that call only, unless a real torchvision imports. Used only by
``tests/spec/test_image_spec.py`` and ``benchmarks/bench_image_spec.py``; never by lwgpu.
"""
from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_SHIM = Path(__file__).resolve().parent / "torchvision"


def install_torchvision_shim() -> bool:
    """Register the stand-in ``torchvision`` (True), or leave a working real one alone (False)."""
    if "torchvision" in sys.modules:
        return getattr(sys.modules["torchvision"], "__version__", "").endswith("lwgpu-shim")
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:  # not installed, or a wheel that does not load against this torch
        sys.modules.pop("torchvision", None)
    spec = importlib.util.spec_from_file_location("torchvision", _SHIM / "__init__.py",
                                                  submodule_search_locations=[str(_SHIM)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["torchvision"] = module
    spec.loader.exec_module(module)
    sys.modules["torchvision.transforms"] = module.transforms
    return True


def _import_image_module():
    """Import ``learnware.specification.regular.image.rkme`` without the package's text specs.

    ``learnware.specification``'s ``__init__`` imports every spec type, and the text ones pull in
    transformers, trl and peft (about 30 s on a loaded 2-core machine). When that package is not
    loaded yet, its two parent packages are stood in by bare package objects for the duration of
    this import only (the image module and its own imports load normally), then removed again, so a
    later ``import learnware.specification`` runs the real ``__init__`` and reuses these modules.
    """
    if "learnware.specification" in sys.modules:
        from learnware.specification.regular.image import rkme
        return rkme
    import importlib
    import types

    import learnware

    base = Path(learnware.__file__).resolve().parent / "specification"
    made = []
    for name, path in (("learnware.specification", base), ("learnware.specification.regular", base / "regular")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        mod.__package__ = name
        sys.modules[name] = mod
        made.append(name)
    try:
        return importlib.import_module("learnware.specification.regular.image.rkme")
    finally:
        for name in made:
            sys.modules.pop(name, None)


def reference_image_class():
    """The reference's ``RKMEImageSpecification`` with the resize shim in place (ImportError if absent)."""
    RKMEImageSpecification = _import_image_module().RKMEImageSpecification

    import torch_optimizer  # noqa: F401  (the reference's fit needs it; fail early and clearly)

    def generate_stat_spec_from_data(self, *args, **kwargs):
        with torchvision_shim():
            return RKMEImageSpecification.generate_stat_spec_from_data(self, *args, **kwargs)

    # same class name: the reference writes ``type(self).__name__`` into its JSON
    return type("RKMEImageSpecification", (RKMEImageSpecification,),
                {"generate_stat_spec_from_data": generate_stat_spec_from_data, "__module__": __name__})


@contextmanager
def torchvision_shim() -> Iterator[None]:
    """The stand-in ``torchvision`` in ``sys.modules`` inside the block only (so that
    ``transformers``, if imported later, still finds no torchvision)."""
    installed = install_torchvision_shim()
    try:
        yield
    finally:
        if installed:
            sys.modules.pop("torchvision.transforms", None)
            sys.modules.pop("torchvision", None)
