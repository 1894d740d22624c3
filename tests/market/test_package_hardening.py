"""Hostile packages are refused by the ``package`` check before anything unsafe happens.

One test per attack: zip bombs (ratio, total size, member count, lying headers), links, special files,
escaping paths and Python tags in ``learnware.yaml``. Each asserts the rule that refused the package,
that the market is unchanged (rows, files, banks) and that nothing appeared outside the market's
scratch folder (the whole test tree and the escape targets are compared before and after).
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

from market_testutil import snapshot
from lwgpu.market import Market, SubmissionError, pack_learnware
from lwgpu.market.archive import PackageLimits, PackageRefused, extract_zip
from lwgpu.market.package import read_manifest
from lwgpu.spec.rkme import RKME

D = 4
SEM = {"data_type": "table", "task_type": "classification", "input_dim": D, "output_dim": 3, "name": "base",
       "description": "a small package the attacks are built on", "tags": ["test"], "library": "sklearn",
       "license": "MIT"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(module tree root, a valid package folder, its market); the market holds nothing at first."""
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("harden")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, D))
    model = LogisticRegression().fit(X, np.arange(60) % 3)
    spec = RKME(X[:8], np.full(8, 1 / 8), 0.1)
    folder = pack_learnware(model, SEM, spec, root / "base_pkg")
    m = Market(root / "m", device="cpu")
    yield root, folder, m
    m.close()


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (not following links) -> (mode, size)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[p.relative_to(root).as_posix()] = (st.st_mode, st.st_size if not stat.S_ISDIR(st.st_mode) else 0)
    return out


def _refused(base, path: Path, rule: str, targets: tuple[Path, ...] = (), limits: PackageLimits | None = None):
    """Submit ``path``; assert the ``package`` check refused it by ``rule`` and nothing changed anywhere."""
    root, _, m = base
    before, tree = snapshot(m), _tree(root)
    old = m.package_limits
    m.package_limits = limits or old
    try:
        with pytest.raises(SubmissionError) as info:
            m.submit(path)
    finally:
        m.package_limits = old
    exc = info.value
    assert exc.check == "package", exc
    assert isinstance(exc, PackageRefused) and exc.rule == rule, exc
    assert "; " in exc.reason  # what was wrong; how to fix it
    assert snapshot(m) == before and len(m) == 0
    assert not list((root / "m" / ".staging").iterdir())
    assert _tree(root) == tree, "a file appeared or changed outside the market's scratch folder"
    for t in targets:
        assert not os.path.lexists(t), f"{t} was written"
    return exc


def _zip(base, name: str, extra: list[tuple[zipfile.ZipInfo | str, bytes]], compression=zipfile.ZIP_DEFLATED,
         dest: Path | None = None) -> Path:
    """The valid base package zipped, plus ``extra`` members."""
    root, folder, _ = base
    path = (dest or root / "zips") / f"{name}.zip"
    path.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
        for info, data in extra:
            zf.writestr(info, data)
    return path


def _unix_member(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def _folder(base, name: str) -> Path:
    root, folder, _ = base
    dest = root / "folders" / name
    shutil.copytree(folder, dest)
    return dest


def test_valid_base_package_is_accepted(base, tmp_path):
    """The packages below differ from an accepted one only by their attack (zip and folder alike)."""
    _, folder, _ = base
    m = Market(tmp_path / "ok", device="cpu")
    try:
        assert m.submit(_zip(base, "valid", [], dest=tmp_path)) == 1
        assert m.submit(folder, semantic_spec=dict(SEM, name="again")) == 2
    finally:
        m.close()


def test_zip_bomb_by_ratio(base, tmp_path):
    path = _zip(base, "ratio", [("pad.bin", bytes(8 << 20))])  # 8 MiB of zeros -> ~8 KiB deflated
    assert zipfile.ZipFile(path).getinfo("pad.bin").compress_size < (8 << 20) / 200
    exc = _refused(base, path, "ratio")
    assert "pad.bin" in exc.reason
    out = tmp_path / "x"
    out.mkdir()
    with pytest.raises(PackageRefused):  # refused from the central directory: nothing extracted
        extract_zip(path, out)
    assert not list(out.iterdir())


def test_zip_bomb_by_total_size(base, tmp_path):
    rng = np.random.default_rng(1)
    parts = [(f"data/part{i}.bin", rng.bytes(100_000)) for i in range(4)]  # incompressible: ratio ~1
    path = _zip(base, "total", parts)
    limits = PackageLimits(max_total_bytes=300_000)
    _refused(base, path, "total_size", limits=limits)
    out = tmp_path / "x"
    out.mkdir()
    with pytest.raises(PackageRefused):
        extract_zip(path, out, limits)
    assert not list(out.iterdir())
    _refused(base, path, "file_size", limits=PackageLimits(max_file_bytes=50_000))


def test_zip_with_too_many_members(base, tmp_path):
    path = _zip(base, "members", [(f"m/{i}.txt", b"x") for i in range(120)])
    _refused(base, path, "file_count", limits=PackageLimits(max_files=100))
    out = tmp_path / "x"
    out.mkdir()
    with pytest.raises(PackageRefused):
        extract_zip(path, out, PackageLimits(max_files=100))
    assert not list(out.iterdir())


def _patch_sizes(path: Path, member: str, new_size: int) -> None:
    """Make the local and central headers of ``member`` claim ``new_size`` uncompressed bytes."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    raw = bytearray(path.read_bytes())
    off = info.header_offset
    assert raw[off:off + 4] == b"PK\x03\x04"
    struct.pack_into("<I", raw, off + 22, new_size)  # local header: uncompressed size
    name = member.encode()
    cen = raw.find(b"PK\x01\x02")
    while cen != -1:
        n = struct.unpack_from("<H", raw, cen + 28)[0]
        if raw[cen + 46:cen + 46 + n] == name:
            struct.pack_into("<I", raw, cen + 24, new_size)  # central directory: uncompressed size
            break
        cen = raw.find(b"PK\x01\x02", cen + 4)
    assert cen != -1
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("claimed", [1000, 50_000_000])
def test_zip_member_lying_about_its_size(base, tmp_path, claimed):
    """The header claims 1000 bytes (passes every pre-check) or more than the data holds; the stream
    is counted as it is written and stopped at the header's size."""
    data = np.random.default_rng(2).bytes(300_000)
    path = _zip(base, f"lying{claimed}", [("blob.bin", data)])
    _patch_sizes(path, "blob.bin", claimed)
    assert zipfile.ZipFile(path).getinfo("blob.bin").file_size == claimed
    exc = _refused(base, path, "corrupt" if claimed < len(data) else "size_mismatch")
    assert "blob.bin" in exc.reason
    out = tmp_path / "x"
    out.mkdir()
    with pytest.raises(PackageRefused):
        extract_zip(path, out)
    assert (out / "blob.bin").stat().st_size <= min(claimed, len(data))  # never more than the header allowed


def test_symlink_in_zip(base):
    target = base[0] / "zips" / "escaped.txt"
    link = _unix_member("rkme_link.json", stat.S_IFLNK | 0o777)
    path = _zip(base, "symlink", [(link, str(target).encode())])
    _refused(base, path, "symlink", targets=(target,))


def test_device_and_fifo_members_in_zip(base):
    path = _zip(base, "device", [(_unix_member("dev/null", stat.S_IFCHR | 0o666), b"")])
    _refused(base, path, "special_file")
    path = _zip(base, "fifo", [(_unix_member("pipe", stat.S_IFIFO | 0o644), b"")])
    _refused(base, path, "special_file")


def test_symlink_in_folder(base):
    root = base[0]
    secret = root / "secret.txt"
    secret.write_text("not part of any package")
    pkg = _folder(base, "symlink_file")
    os.symlink(secret, pkg / "extra.txt")
    _refused(base, pkg, "symlink")
    pkg = _folder(base, "symlink_dir")
    os.symlink(root, pkg / "up")
    _refused(base, pkg, "symlink")
    pkg = _folder(base, "symlink_manifest")  # even the manifest itself
    (pkg / "learnware.yaml").rename(root / "real.yaml")
    os.symlink(root / "real.yaml", pkg / "learnware.yaml")
    _refused(base, pkg, "symlink")


def test_hard_link_in_folder(base):
    root = base[0]
    secret = root / "secret_hl.txt"
    secret.write_text("another file of the developer's")
    pkg = _folder(base, "hardlink")
    os.link(secret, pkg / "extra.txt")
    _refused(base, pkg, "hardlink")


def test_fifo_and_socket_in_folder(base):
    pkg = _folder(base, "fifo")
    os.mkfifo(pkg / "pipe")
    _refused(base, pkg, "special_file")  # and no hang: the fifo is never opened
    pkg = _folder(base, "sock")
    path = pkg / "s"
    if len(str(path)) < 100:  # AF_UNIX paths are limited to ~107 bytes
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
            _refused(base, pkg, "special_file")


@pytest.mark.parametrize("name", ["/tmp/lwgpu-evil-{u}.txt", "C:/lwgpu-evil-{u}.txt", "C:lwgpu-evil-{u}.txt",
                                  "..\\..\\..\\..\\lwgpu-evil-{u}.txt", "sub\\..\\x.txt", "a//b.txt", "./c.txt"])
def test_absolute_drive_and_backslash_paths(base, name):
    u = uuid.uuid4().hex
    name = name.format(u=u)
    path = _zip(base, f"abs{u}", [(zipfile.ZipInfo(name), b"owned")])
    assert name in zipfile.ZipFile(path).namelist()  # the hostile name really is in the zip
    _refused(base, path, "unsafe_path", targets=(Path(f"/tmp/lwgpu-evil-{u}.txt"), Path(f"C:/lwgpu-evil-{u}.txt")))


@pytest.mark.parametrize("depth", [1, 4, 6])
def test_dotdot_paths(base, depth):
    root = base[0]
    name = "../" * depth + "evil.txt"
    path = _zip(base, f"dotdot{depth}", [(zipfile.ZipInfo(name), b"owned"),
                                          (zipfile.ZipInfo("sub/" + name), b"owned")])
    _refused(base, path, "unsafe_path", targets=(root / "evil.txt", root.parent / "evil.txt"))


def test_python_tags_in_yaml(base):
    root = base[0]
    marker = root / f"pwned-{uuid.uuid4().hex}"
    for i, tag in enumerate([f"!!python/object/apply:os.system ['touch {marker}']", "!!python/name:os.system",
                             "!!python/object:collections.OrderedDict {}", "!!python/module:os"]):
        pkg = _folder(base, f"tag{i}")
        y = pkg / "learnware.yaml"
        y.write_text(y.read_text() + f"extra: {tag}\n")
        exc = _refused(base, pkg, "yaml", targets=(marker,))
        assert "!!python/" in exc.reason and "tuple" in exc.reason
    pkg = _folder(base, "laughs")  # a "billion laughs" manifest: 9 levels of 9 aliases
    lines = ['l0: &l0 "lol"'] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    (pkg / "learnware.yaml").write_text((pkg / "learnware.yaml").read_text() + "\n".join(lines) + "\n")
    _refused(base, pkg, "yaml")


def test_tuple_tag_accepted(base, tmp_path):
    """The reference's ``!!python/tuple`` is read as a tuple, kept in the stored manifest, and its values
    reach the model (in the worker) as a sequence."""
    src = tmp_path / "shaped.py"
    src.write_text("import numpy as np\n\nclass Model:\n    def __init__(self, shape):\n"
                   "        self.shape = list(shape)\n\n    def predict(self, X):\n"
                   "        return np.tile(np.asarray(self.shape, dtype=float), (len(X), 1))\n")
    rng = np.random.default_rng(3)
    sem = dict(SEM, task_type="regression", output_dim=2, name="tuple kwargs", library="other")
    pkg = pack_learnware({"module": str(src), "class": "Model", "kwargs": {"shape": [7, 9]}}, sem,
                         RKME(rng.normal(size=(8, D)), np.full(8, 1 / 8), 0.1), tmp_path / "tuple_pkg")
    y = pkg / "learnware.yaml"
    text = y.read_text()
    assert "- 7\n" in text
    y.write_text(text.replace("shape:\n", "shape: !!python/tuple\n"))
    assert read_manifest(pkg).model["kwargs"]["shape"] == (7, 9)
    m = Market(tmp_path / "m", device="cpu")
    try:
        i = m.submit(pkg)
        lw = m.get(i)
        assert read_manifest(lw.path).model["kwargs"]["shape"] == (7, 9)
        np.testing.assert_array_equal(lw.predict(np.zeros((3, D))), [[7.0, 9.0]] * 3)
    finally:
        m.close()
