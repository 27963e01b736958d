"""The data mixture: counts per source, single-source batches, determinism, resume, ranks."""

from collections import Counter

import pytest
import torch

from fin3r.data.mixture import DEFAULT_COUNTS, MixtureDataset, MixtureSampler

SIZES = {"sa1b": 50, "hypersim": 7, "tartanair": 30}
COUNTS = {"sa1b": 40, "hypersim": 10, "tartanair": 12}


def test_counts_single_source_and_coverage():
    s = MixtureSampler(SIZES, COUNTS, batch_size=4, seed=3)
    batches = list(s)
    assert all(len({src for src, _ in b}) == 1 and len(b) == 4 for b in batches)
    per = Counter(src for b in batches for src, _ in b)
    # each source: ceil(count / bs) full batches
    assert per == {"sa1b": 40, "hypersim": 12, "tartanair": 12}
    sa = [i for b in batches for src, i in b if src == "sa1b"]
    assert len(set(sa)) == 40 and all(0 <= i < 50 for i in sa)  # no repeat within a pass
    hs = Counter(i for b in batches for src, i in b if src == "hypersim")
    assert set(hs) == set(range(7)) and max(hs.values()) == 2  # count > size: whole passes
    assert {src for b in batches[:5] for src, _ in b} != {batches[0][0][0]}  # sources interleaved


def test_default_counts_and_errors():
    s = MixtureSampler({"sa1b": 100000, "hypersim": 5000, "tartanair": 5000}, batch_size=8)
    assert s.counts == DEFAULT_COUNTS and len(s) == 2500 + 125 + 125
    with pytest.raises(ValueError):
        MixtureSampler({"sa1b": 0}, {"sa1b": 5}, 2)
    with pytest.raises(ValueError):
        MixtureSampler({"a": 3}, {"a": 5}, 2, rank=2, world_size=2)


def test_deterministic_per_seed_and_epoch():
    a, b = MixtureSampler(SIZES, COUNTS, 4, seed=1), MixtureSampler(SIZES, COUNTS, 4, seed=1)
    assert list(a) == list(b)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0
    assert list(MixtureSampler(SIZES, COUNTS, 4, seed=2)) != e0


def test_resume_at_sample_offset():
    s = MixtureSampler(SIZES, COUNTS, 4, seed=5)
    s.set_epoch(2)
    full = list(s)
    it = iter(s)
    first = [next(it) for _ in range(6)]
    state = s.state_dict()
    assert state["offset"] == 24 and state["epoch"] == 2
    r = MixtureSampler(SIZES, COUNTS, 4, seed=5)
    r.load_state_dict(state)
    assert first + list(r) == full
    assert list(r) == full  # the offset applies once
    with pytest.raises(ValueError):
        MixtureSampler(SIZES, COUNTS, 8, seed=5).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_disjoint_equal_length(world_size):
    plans = [list(MixtureSampler(SIZES, COUNTS, 4, seed=0, rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(p) for p in plans}) == 1
    single = MixtureSampler(SIZES, COUNTS, 4, seed=0).global_plan()
    merged = [b for p in plans for b in p]
    n = len(single)
    # together the ranks cover the global plan (plus at most world_size - 1 repeated batches)
    assert len(merged) - n < world_size
    assert Counter(map(tuple, merged)) - Counter(map(tuple, single)) == Counter(map(tuple, single[: len(merged) - n]))


def test_dataloader_with_mixture_dataset():
    class Src(torch.utils.data.Dataset):
        def __init__(self, name, n):
            self.name, self.n = name, n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {"x": torch.tensor(float(i)), "source": self.name}

    ds = MixtureDataset({k: Src(k, v) for k, v in SIZES.items()})
    sampler = MixtureSampler(ds.sizes(), COUNTS, 4, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler)
    for got, plan in zip(batches, sampler.global_plan()):
        assert got["source"] == [plan[0][0]] * 4
        assert got["x"].tolist() == [float(i) for _, i in plan]
