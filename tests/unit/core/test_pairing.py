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
