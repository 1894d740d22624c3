"""Where ``lwgpu-bench`` finds its Hydra configs: the shipped ``configs/`` and a researcher's own folders.

The repository's top-level ``configs/`` is the single source. A wheel carries a copy of it as the data
package ``lwgpu._configs`` (``setup.py`` maps that package to ``configs/``); a source checkout or an
editable install (``pip install -e .``) reads ``configs/`` itself, so edits show up without reinstalling.

Extra folders are added to Hydra's search path by ``--config-dir DIR``, ``hydra.searchpath=[file://DIR]``
or the environment variable ``LWGPU_CONFIG_PATH`` (folders separated by ``os.pathsep``), see
:class:`EnvSearchPathPlugin`.
"""
from __future__ import annotations

import functools
import logging
import os
from importlib import resources
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

logger = logging.getLogger(__name__)

#: The data package holding the shipped configs inside an installed wheel.
CONFIG_PACKAGE = "lwgpu._configs"
#: os.pathsep-separated folders of a researcher's own configs, searched after the shipped ones.
ENV_VAR = "LWGPU_CONFIG_PATH"
#: Hydra's name for the search-path entries this module adds (shown by ``lwgpu-bench --info searchpath``).
PROVIDER = "lwgpu-env"


@functools.lru_cache(maxsize=None)
def config_dir() -> Path:
    """The folder of the shipped Hydra configs (the one holding ``config.yaml``), as an absolute path.

    Returns
    -------
    Path
        ``<site-packages>/lwgpu/_configs`` for a wheel; the repository's ``configs/`` for a source
        checkout or an editable install (setuptools' editable finder does not map data packages that
        have no ``__init__.py``, so those fall through to the checkout).

    Raises
    ------
    FileNotFoundError
        When neither location holds ``config.yaml`` (a broken install).
    """
    try:
        shipped = resources.files(CONFIG_PACKAGE).joinpath("config.yaml")
        if shipped.is_file():
            return Path(str(shipped)).resolve().parent
    except (ModuleNotFoundError, TypeError, NotADirectoryError):  # no data package: not a wheel install
        pass
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if (checkout / "config.yaml").is_file():
        return checkout
    raise FileNotFoundError(f"lwgpu's configs were found neither in the package {CONFIG_PACKAGE!r} nor at {checkout}; "
                            "reinstall lwgpu (`pip install .`) or run from a source checkout")


def env_config_dirs(value: str | None = None) -> list[Path]:
    """The existing folders named by ``LWGPU_CONFIG_PATH`` (or ``value``), absolute, in order.

    Empty entries are ignored; a folder that does not exist is skipped with a warning.
    """
    value = os.environ.get(ENV_VAR, "") if value is None else value
    dirs = []
    for entry in value.split(os.pathsep):
        if not entry.strip():
            continue
        path = Path(entry).expanduser().resolve()
        if path.is_dir():
            dirs.append(path)
        else:
            logger.warning("%s names %s, which is not a folder: skipped", ENV_VAR, path)
    return dirs


class EnvSearchPathPlugin(SearchPathPlugin):
    """Appends the folders of ``LWGPU_CONFIG_PATH`` to Hydra's search path, after the shipped configs.

    It only acts on a search path whose primary ("main") entry is :func:`config_dir`, so other Hydra
    applications in the same process are left alone. Like ``hydra.searchpath``, the added folders come
    after the shipped ones: they add new options (``experiment=my_study``) rather than replace shipped files.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        main = str(config_dir())
        if not any(e.provider == "main" and e.path.removeprefix("file://") == main for e in search_path.get_path()):
            return
        for path in env_config_dirs():
            search_path.append(provider=PROVIDER, path=f"file://{path}")


def register_search_path_plugin() -> None:
    """Register :class:`EnvSearchPathPlugin` with Hydra (idempotent)."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    if EnvSearchPathPlugin not in plugins.discover(SearchPathPlugin):
        plugins.register(EnvSearchPathPlugin)
