"""Image specs through FAISS (lwgpu.index.image_index): feature-space candidates re-ranked by the exact NNGP MMD
give the exact scan's nearest specs, respect the admitted ids, and follow the bank."""
import numpy as np
import pytest
import torch

from lwgpu import settings
from lwgpu.index.image_index import ImageIndex
from lwgpu.market.image_bank import ImageBank
from lwgpu.market.typed_search import image_index_of, search_image
from lwgpu.spec.image import ImageRKME

pytest.importorskip("faiss")


def _specs(n_groups=8, per_group=5, K=3, seed=0):
    """Groups of image specs around distinct base images (their nearest specs are their group's)."""
    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(n_groups, 1, 1, 32, 32, generator=g)
    specs, group = [], []
    for i in range(n_groups):
        for _ in range(per_group):
            z = bases[i] + 0.3 * torch.randn(K, 1, 32, 32, generator=g)
            specs.append(ImageRKME(z, torch.full((K,), 1.0 / K, dtype=torch.float64)))
            group.append(i)
    return specs, np.array(group), bases


@pytest.fixture(scope="module")
def bank():
    specs, group, bases = _specs()
    b = ImageBank(None, 0.1, (1, 32, 32), device="cpu")
    b.add(specs, np.arange(len(specs)) * 2 + 5)  # ids are not positions
    return b, group, bases


def _query(bases, i, seed):
    g = torch.Generator().manual_seed(100 + seed)
    return ImageRKME(bases[i] + 0.3 * torch.randn(3, 1, 32, 32, generator=g), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_index_search_finds_the_exact_nearest(bank, monkeypatch):
    b, group, bases = bank
    monkeypatch.setattr(settings, "IMAGE_INDEX_CANDIDATES", 8)  # 12 (4k) of 40 specs looked at
    for i in (0, 3, 6):
        q = _query(bases, i, i)
        exact = search_image(b, q, None, k=3, index_threshold=10**9)
        fast = search_image(b, q, None, k=3, index_threshold=0)
        assert exact.method == "exact-image" and fast.method == "index-image"
        assert [it.id for it in fast.single] == [it.id for it in exact.single]
        np.testing.assert_allclose([it.mmd2 for it in fast.single], [it.mmd2 for it in exact.single], rtol=1e-12)
        assert fast.n_candidates == 12  # max(IMAGE_INDEX_CANDIDATES, 4k)


def test_candidates_respect_admitted_ids(bank):
    b, group, bases = bank
    idx = image_index_of(b)
    allowed = b.ids[group != 2]
    got = idx.candidates(_query(bases, 2, 7), 10, allowed=allowed)
    assert got.size == 10 and set(got) <= set(allowed)
    assert idx.candidates(_query(bases, 2, 7), 10, allowed=np.array([], np.int64)).size == 0


def test_index_follows_the_bank():
    specs, group, bases = _specs(n_groups=3, per_group=3)
    b = ImageBank(None, 0.1, (1, 32, 32), device="cpu")
    b.add(specs[:6], np.arange(6))
    first = image_index_of(b)
    assert len(first) == 6 and image_index_of(b) is first  # unchanged bank: same index
    b.add(specs[6:], np.arange(6, 9))
    grown = image_index_of(b)
    assert grown is not first and len(grown) == 9
    idx = ImageIndex(1)
    idx.add(b.z, b.beta, b.ids)
    idx.remove([0, 4])
    assert len(idx) == 7 and not {0, 4} & set(idx.candidates(specs[0], 9).tolist())
