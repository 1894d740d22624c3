"""Configs that install: a wheel carries ``configs/``, its ``lwgpu-bench`` runs from any folder, and a
researcher's own config folder joins Hydra's search path (``--config-dir``, ``hydra.searchpath``,
``LWGPU_CONFIG_PATH``) without editing the package."""
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
from omegaconf import OmegaConf

from lwgpu.cli.config_path import ENV_VAR, PROVIDER, EnvSearchPathPlugin, config_dir, env_config_dirs
from lwgpu.tracking import read_jsonl

REPO = Path(__file__).resolve().parents[2]
#: The tiny study on torch only: a fresh install has no numba cache, and compiling it would take ~30 s.
FAST = ("debug=default", "spec.engine=torch", "kernel=torch", "search=single", "index=none")
USER_EXPERIMENT = """\
# @package _global_
# A researcher's own study, outside the package.
experiment:
  name: my_study
  sweep: null
  plots: []
spec:
  gamma: 0.25
"""


def _env(pythonpath: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    return {**env, "WANDB_MODE": "disabled", "PYTHONPATH": str(pythonpath), **extra}


def _bench(args, cwd: Path, env: dict[str, str], entry=None) -> subprocess.CompletedProcess:
    entry = entry or [sys.executable, "-m", "lwgpu.cli.bench"]
    proc = subprocess.run(entry + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of this checkout (built offline, outside the shared working tree)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("lwgpu", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "-q", "-w", str(root / "dist"), str(src)]
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = (root / "dist").glob("lwgpu-*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a scratch folder (``pip install --target``), for ``PYTHONPATH``."""
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q",
           "--target", str(target), str(wheel)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


@pytest.fixture
def user_configs(tmp_path) -> Path:
    """A researcher's config folder holding one experiment of their own."""
    folder = tmp_path / "my_configs"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "my_study.yaml").write_text(USER_EXPERIMENT)
    return folder


def test_wheel_carries_configs_and_cuda_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"lwgpu/_configs/{p.relative_to(REPO / 'configs').as_posix()}" for p in (REPO / "configs").rglob("*.yaml")}
    assert "lwgpu/_configs/config.yaml" in shipped and shipped <= names
    assert "lwgpu/kernels/cuda/mmd.cu" in names
    assert not any(n.startswith(("configs/", "lwgpu/conf/")) for n in names)


def test_wheel_install_runs_from_any_folder(site, tmp_path):
    env = _env(site)
    where = subprocess.run([sys.executable, "-c", "from lwgpu.cli.bench import CONFIG_DIR; print(CONFIG_DIR)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()) == (site / "lwgpu" / "_configs").resolve()  # the copy, not the checkout
    out = tmp_path / "out"
    proc = _bench([*FAST, f"hydra.run.dir={out}"], cwd=tmp_path, env=env)
    assert f"results: {out / 'results.jsonl'}" in proc.stdout
    assert read_jsonl(out / "results.jsonl") and (out / "results.csv").exists()
    assert (out / "config_resolved.yaml").exists() and (out / ".hydra" / "config.yaml").exists()


def test_wheel_console_script_finds_user_configs(site, user_configs, tmp_path):
    script = site / "bin" / "lwgpu-bench"
    assert script.exists()
    proc = _bench(["--cfg", "job", "experiment=my_study"], cwd=tmp_path,
                  env=_env(site, **{ENV_VAR: str(user_configs)}), entry=[sys.executable, str(script)])
    assert "name: my_study" in proc.stdout and "gamma: 0.25" in proc.stdout


@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath", ENV_VAR])
def test_user_experiment_found_and_saved(how, user_configs, tmp_path):
    """The checkout (editable install): a user's experiment file is found and its override is saved."""
    env = _env(REPO)
    args = [*FAST, "experiment=my_study", f"hydra.run.dir={tmp_path / 'out'}"]
    if how == "--config-dir":
        args = ["--config-dir", str(user_configs)] + args
    elif how == "hydra.searchpath":
        args.append(f"hydra.searchpath=[file://{user_configs}]")
    else:
        env[ENV_VAR] = os.pathsep.join(["", str(tmp_path / "missing"), str(user_configs)])
    _bench(args, cwd=tmp_path, env=env)
    cfg = OmegaConf.load(tmp_path / "out" / "config_resolved.yaml")
    assert cfg.experiment.name == "my_study" and cfg.spec.gamma == 0.25
    assert {r["experiment"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")} == {"my_study"}


def test_config_dir_is_the_checkout_in_an_editable_install():
    assert config_dir() == REPO / "configs"
    assert (config_dir() / "config.yaml").is_file()


def test_env_config_dirs_parses_and_skips_missing(tmp_path, monkeypatch, caplog):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(a), "", str(tmp_path / "nope"), str(b)]))
    with caplog.at_level(logging.WARNING, logger="lwgpu.cli.config_path"):
        assert env_config_dirs() == [a, b]
    assert "nope" in caplog.text
    monkeypatch.delenv(ENV_VAR)
    assert env_config_dirs() == []


def test_env_plugin_only_extends_lwgpu_search_paths(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    for main, expect in ((str(config_dir()), [f"file://{tmp_path}"]), (str(tmp_path / "other_app"), [])):
        search_path = ConfigSearchPathImpl()
        search_path.append("main", main)
        EnvSearchPathPlugin().manipulate_search_path(search_path)
        assert [e.path for e in search_path.get_path() if e.provider == PROVIDER] == expect
