"""Everything lwgpu writes follows the process umask: files ``0o666 & ~umask``, folders ``0o777 & ~umask``,
including files written through a temporary name (mkstemp makes 0o600, mkdtemp 0o700) and package
files whose zip or folder carried other modes (0o600, 0o755, setuid)."""
from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lwgpu import fsutil
from lwgpu.bank import SpecBank
from lwgpu.spec.rkme import RKME

D = 3


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _specs(n: int, seed: int = 0) -> list[RKME]:
    rng = np.random.default_rng(seed)
    return [RKME(rng.normal(i, 1, size=(4, D)), np.full(4, 0.25), 0.1) for i in range(n)]


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of every file and folder under ``root`` (not root itself: pytest makes it 0o700)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = stat.S_IMODE(p.lstat().st_mode)
    return out


def _assert_modes(root: Path, mask: int, min_files: int = 1) -> None:
    modes = _modes(root)
    want_f, want_d = 0o666 & ~mask, 0o777 & ~mask
    bad = {k: oct(v) for k, v in modes.items()
           if v != (want_d if (root / k).is_dir() else want_f)}
    assert not bad, f"umask {oct(mask)}: expected files {oct(want_f)}, folders {oct(want_d)}; got {bad}"
    assert sum(1 for k in modes if (root / k).is_file()) >= min_files


def test_fsutil_reads_the_umask_without_changing_it(umask):
    assert fsutil.current_umask() == umask
    assert fsutil.current_umask() == umask  # reading did not change it
    assert (fsutil.file_mode(), fsutil.dir_mode()) == (0o666 & ~umask, 0o777 & ~umask)
    tmp = fsutil.make_temp_dir("/tmp", prefix="lwgpu-umask-")
    try:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o777 & ~umask
    finally:
        tmp.rmdir()


def test_spec_json_mode(umask, tmp_path):
    _specs(1)[0].save(tmp_path / "a" / "spec.json")
    _specs(1, seed=1)[0].save(tmp_path / "a" / "spec.json")  # replacing keeps the mode
    assert RKME.load(tmp_path / "a" / "spec.json").d == D
    _assert_modes(tmp_path, umask)


def test_bank_files_and_folders_mode(umask, tmp_path):
    from lwgpu.index import SpecIndex

    bank = SpecBank.create(tmp_path / "bank", 0.1, D)
    bank.add(_specs(20), ids=np.arange(20))
    bank.flush()
    bank.remove([3, 4])  # journal records
    bank.flush()
    SpecIndex(bank, factory="Flat", D=64).save(tmp_path / "bank")  # an index beside its bank
    bank.close()
    SpecBank.open(tmp_path / "bank", mode="r").close()
    SpecBank(0.1, D).save(tmp_path / "snapshot")  # snapshot (temp + replace per file)
    _assert_modes(tmp_path, umask, min_files=8)


def test_market_files_mode(umask, tmp_path):
    """Database (and its WAL/SHM), learnware folders and files, banks and indexes of a market."""
    from sklearn.dummy import DummyRegressor

    from lwgpu.market import Market

    model = DummyRegressor().fit(np.zeros((2, D)), [0.0, 1.0])

    sem = {"data_type": "table", "task_type": "regression", "input_dim": D, "output_dim": 1, "name": "m",
           "description": "umask", "tags": ["t"], "library": "other", "license": "MIT"}
    with Market(tmp_path / "m", device="cpu", index_threshold=4) as m:
        ids = m.add_many([model] * 6, [dict(sem, name=f"m{i}") for i in range(6)], _specs(6), check=False,
                         progress=False)
        assert ids == [1, 2, 3, 4, 5, 6]
        m.delete(2)
        m.flush()
        assert m.search(_specs(1)[0], k=2).single
        assert (tmp_path / "m" / "market.db-wal").exists() and any((tmp_path / "m" / "indexes").iterdir())
        _assert_modes(tmp_path / "m", umask, min_files=20)
    _assert_modes(tmp_path / "m", umask, min_files=20)


def test_unpacked_package_modes(umask, tmp_path):
    """Extracted and copied package files get the umask's modes, not the modes the package carried."""
    from lwgpu.market.package import unpack_into

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name, mode in (("a.txt", 0o600), ("run.sh", 0o755), ("sub/b.bin", 0o4755)):
        (src / name).write_bytes(b"x" * 10)
        os.chmod(src / name, mode)
    zpath = tmp_path / "p.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, mode in (("a.txt", 0o600), ("run.sh", 0o755), ("sub/b.bin", 0o4755)):
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (stat.S_IFREG | mode) << 16
            zf.writestr(info, b"x" * 10)
    out = tmp_path / "out"
    out.mkdir()
    unpack_into(zpath, out / "from_zip")
    unpack_into(src, out / "from_folder")
    assert sorted(p.relative_to(out / "from_zip").as_posix() for p in (out / "from_zip").rglob("*")) == \
        ["a.txt", "run.sh", "sub", "sub/b.bin"]
    _assert_modes(out, umask, min_files=6)
