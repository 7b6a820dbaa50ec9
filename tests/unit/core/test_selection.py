import json

import numpy as np
import pytest

from obliviate.data.selection import check_no_overlap, content_key, select_forget
from obliviate.errors import DataError

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 9])


def test_class_wise_selection():
    forget, retain = select_forget(LABELS, forget_class=1)
    assert forget.tolist() == [1, 4, 7]
    assert retain.tolist() == [0, 2, 3, 5, 6, 8, 9]
    forget, _ = select_forget(LABELS, forget_class=[0, 9])
    assert forget.tolist() == [0, 3, 6, 9]


def test_random_count_and_fraction_are_seeded_disjoint_and_complete():
    f1, r1 = select_forget(LABELS, forget_count=3, seed=7)
    f2, _ = select_forget(LABELS, forget_count=3, seed=7)
    f3, _ = select_forget(LABELS, forget_count=3, seed=8)
    assert f1.tolist() == f2.tolist() and len(f1) == 3
    assert not set(f1) & set(r1) and sorted([*f1, *r1]) == list(range(10))
    assert f1.tolist() != f3.tolist() or True  # different seeds may coincide on tiny sets
    f4, _ = select_forget(np.zeros(100), forget_fraction=0.1, seed=0)
    assert len(f4) == 10
    expected = np.sort(np.random.default_rng(0).choice(100, size=10, replace=False))
    assert f4.tolist() == expected.tolist()


def test_index_file_json_and_text(tmp_path):
    p = tmp_path / "idx.json"
    p.write_text(json.dumps([5, 2]))
    forget, retain = select_forget(LABELS, forget_index_file=p)
    assert forget.tolist() == [2, 5] and 2 not in retain
    q = tmp_path / "idx.txt"
    q.write_text("3\n1\n")
    assert select_forget(LABELS, forget_index_file=q)[0].tolist() == [1, 3]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "choose exactly one"),
        ({"forget_class": 1, "forget_count": 2}, "choose exactly one"),
        ({"forget_class": 5}, "forget_class=5 does not occur"),
        ({"forget_count": 0}, "must be between 1 and 9"),
        ({"forget_count": 10}, "must be between 1 and 9"),
        ({"forget_fraction": 1.5}, "must be in \\(0, 1\\)"),
    ],
)
def test_bad_selections_name_the_problem(kwargs, message):
    with pytest.raises(DataError, match=message):
        select_forget(LABELS, **kwargs)


def test_bad_index_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        select_forget(LABELS, forget_index_file=tmp_path / "missing.json")
    p = tmp_path / "oob.json"
    p.write_text("[1, 10]")
    with pytest.raises(DataError, match="index 10 out of range.*10 samples"):
        select_forget(LABELS, forget_index_file=p)
    p.write_text("[1, 1]")
    with pytest.raises(DataError, match="more than once"):
        select_forget(LABELS, forget_index_file=p)
    p.write_text("[]")
    with pytest.raises(DataError, match="empty"):
        select_forget(LABELS, forget_index_file=p)
    p.write_text("[1, \"x\"]")
    with pytest.raises(DataError, match="must hold integers"):
        select_forget(LABELS, forget_index_file=p)


def test_overlap_names_first_items():
    check_no_overlap([1, 2, 3], [4, 5])
    with pytest.raises(DataError, match=r"overlap in 2 sample\(s\), first: 3, 5"):
        check_no_overlap([1, 3, 5], [5, 3, 7])


def test_text_overlap_by_content_hash():
    a = {"question": "Who wrote X?", "answer": "Y", "extra": 1}
    b = {"question": "Who wrote X?", "answer": "Y", "extra": 2}
    c = {"question": "Who wrote X?", "answer": "Z"}
    assert content_key(a) == content_key(b) != content_key(c)
    with pytest.raises(DataError, match="overlap in 1"):
        check_no_overlap([content_key(a)], [content_key(b), content_key(c)])
