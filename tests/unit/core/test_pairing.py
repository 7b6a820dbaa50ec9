import torch

from obliviate.data.pairing import ForgetRetainDataset, PairCollator
from obliviate.data.vision.tensors import TensorImageDataset


def _ds(n, offset=0):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1) + offset
    return TensorImageDataset(x, torch.arange(n) % 3, indices=torch.arange(n).numpy() + offset)


def test_anchored_on_forget_with_sampled_retain():
    forget, retain = _ds(4), _ds(50, offset=100)
    pairs = ForgetRetainDataset(forget, retain, seed=3)
    assert len(pairs) == 4
    items = [pairs[i] for i in range(4)]
    assert [it["forget"]["index"] for it in items] == [0, 1, 2, 3]
    assert all(100 <= it["retain"]["index"] < 150 for it in items)
    again = ForgetRetainDataset(forget, retain, seed=3)
    assert [again[i]["retain"]["index"] for i in range(4)] == [it["retain"]["index"] for it in items]
    pairs.set_epoch(1)
    assert [pairs[i]["retain"]["index"] for i in range(4)] != [it["retain"]["index"] for it in items]


def test_anchored_on_retain_and_forget_only():
    forget, retain = _ds(4), _ds(10, offset=100)
    pairs = ForgetRetainDataset(forget, retain, anchor="retain")
    assert len(pairs) == 10 and all(0 <= pairs[i]["forget"]["index"] < 4 for i in range(10))
    only = ForgetRetainDataset(forget, None)
    assert set(only[0]) == {"forget"}


def test_pair_collator_stacks_each_side():
    pairs = ForgetRetainDataset(_ds(4), _ds(10, offset=100))
    batch = PairCollator()([pairs[i] for i in range(3)])
    assert batch["forget"]["pixel_values"].shape == (3, 1, 1, 1)
    assert batch["forget"]["index"].tolist() == [0, 1, 2]
    assert batch["retain"]["labels"].shape == (3,)


def test_passes_walk_the_forget_set_then_the_retain_set_one_side_per_batch():
    forget, retain = _ds(5), _ds(11, offset=100)
    passes = ForgetRetainDataset(forget, retain, anchor="passes", seed=2)
    assert len(passes) == 16
    sampler = passes.batch_sampler(4)
    assert len(sampler) == 2 + 3  # ceil(5/4) forget batches, ceil(11/4) retain batches
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 1, 4, 4, 3]  # the last batch of each side may be smaller
    sides = [{side for i in b for side in passes[i]} for b in batches]
    assert sides == [{"forget"}] * 2 + [{"retain"}] * 3
    rows = [i for b in batches for i in b]
    assert sorted(rows[:5]) == list(range(5)) and sorted(rows[5:]) == list(range(5, 16))  # each sample once
    assert [passes[i]["retain"]["index"] for i in batches[2]] == [100 + i - 5 for i in batches[2]]
    assert list(passes.batch_sampler(4)) == batches  # deterministic for an epoch (resume-safe)
    sampler.set_epoch(1)
    assert list(sampler) != batches
    collated = PairCollator()([passes[i] for i in batches[0]])
    assert set(collated) == {"forget"} and collated["forget"]["labels"].shape == (4,)


def test_passes_need_a_retain_set_and_pairs_have_no_batch_sampler():
    import pytest

    from obliviate.errors import DataError

    with pytest.raises(DataError, match="passes"):
        ForgetRetainDataset(_ds(3), None, anchor="passes")
    with pytest.raises(DataError, match="batch_sampler"):
        ForgetRetainDataset(_ds(3), _ds(4), anchor="forget").batch_sampler(2)


def test_passes_under_ddp_keep_each_optimizer_step_on_one_side():
    from obliviate.data.pairing import PassesBatchSampler

    sampler = PassesBatchSampler(5, 11, batch_size=3, seed=0, num_replicas=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (1 + 2) * 2  # global batches of 6 rows: 1 forget, 2 retain; 2 per-process parts each
    steps = [batches[i : i + 2] for i in range(0, len(batches), 2)]  # accelerate deals batches round-robin: one per process
    for step in steps:
        sides = {"forget" if i < 5 else "retain" for part in step for i in part}
        assert len(sides) == 1 and all(part for part in step)
    assert sorted(i for part in batches[:2] for i in part) == list(range(5))
    assert sorted(i for part in batches[2:] for i in part) == list(range(5, 16))
    tiny = list(PassesBatchSampler(1, 4, batch_size=4, num_replicas=2))  # 1 forget row, 2 processes: repeated, never empty
    assert tiny[:2] == [[0], [0]] and all(tiny)



def test_passes_dealt_by_accelerate_give_every_process_the_same_steps():
    """What each DDP process really iterates: accelerate's BatchSamplerShard over the sampler.
    Every process takes the same number of batches, step k is on one side for all of them, and
    together they see every row (a sampler ``batch_size`` made accelerate drop the short
    per-process batches at a side's end, and the ranks deadlocked)."""
    from accelerate.data_loader import BatchSamplerShard

    from obliviate.data.pairing import PassesBatchSampler

    for n_forget, n_retain, bs in ((10, 90, 32), (144, 1293, 32), (5, 11, 3), (1, 4, 4)):
        sampler = PassesBatchSampler(n_forget, n_retain, batch_size=bs, seed=0, num_replicas=2)
        per_rank = [list(BatchSamplerShard(sampler, num_processes=2, process_index=r, split_batches=False, even_batches=True))
                    for r in range(2)]
        assert len(per_rank[0]) == len(per_rank[1]) == len(sampler) // 2, (n_forget, n_retain)
        for a, b in zip(*per_rank):
            sides = {"forget" if i < n_forget else "retain" for i in (*a, *b)}
            assert len(sides) == 1 and a and b
        seen = {i for rank in per_rank for batch in rank for i in batch}
        assert seen == set(range(n_forget + n_retain))

def test_mixed_epochs_shuffle_forget_with_a_fixed_share_of_retain():
    forget, retain = _ds(4), _ds(20, offset=100)
    mixed = ForgetRetainDataset(forget, retain, anchor="mixed", seed=1, retain_fraction=0.3)
    assert len(mixed) == 4 + 6
    items = [mixed[i] for i in range(len(mixed))]
    assert [set(it) for it in items] == [{"forget"}] * 4 + [{"retain"}] * 6
    kept = sorted(it["retain"]["index"] for it in items[4:])
    assert len(set(kept)) == 6 and all(100 <= i < 120 for i in kept)
    mixed.set_epoch(3)
    assert sorted(mixed[i]["retain"]["index"] for i in range(4, 10)) == kept  # drawn once, like the reference's random.sample
    batch = PairCollator()([items[0], items[5], items[1], items[6], items[7]])
    assert batch["forget"]["index"].tolist() == [0, 1] and batch["retain"]["labels"].shape == (3,)
    assert set(PairCollator()([items[5], items[6]])) == {"retain"}
