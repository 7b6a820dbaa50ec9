import numpy as np
import pytest

from obliviate.metrics.classification import accuracy, avg_gap, per_class_accuracy
from obliviate.metrics import classification
from obliviate.metrics.mia import mia_efficacy


def test_accuracy_is_over_samples_not_batches():
    pred = [1, 1, 0, 2, 2]
    label = [1, 0, 0, 2, 1]
    assert accuracy(pred, label) == pytest.approx(60.0)
    # batch means (2/2, 1/3) would give 66.7: we must not do that
    assert np.isnan(accuracy([], []))


def test_class_wise_test_accuracy_excludes_forgotten_class():
    label = np.array([0, 0, 1, 1, 9, 9, 9])
    pred = np.array([0, 1, 1, 1, 9, 0, 0])
    ta, ta_forget = classification.test_accuracy(pred, label, forget_classes=[9])
    assert ta == pytest.approx(75.0)  # 3 of 4 non-9 samples
    assert ta_forget == pytest.approx(100 / 3)
    ta_all, none = classification.test_accuracy(pred, label)
    assert ta_all == pytest.approx(100 * 4 / 7) and none is None


def test_avg_gap_by_hand():
    m = {"UA": 10.0, "RA": 90.0, "TA": 80.0, "MIA": 30.0}
    r = {"UA": 20.0, "RA": 95.0, "TA": 82.0, "MIA": 10.0}
    assert avg_gap(m, r) == pytest.approx((10 + 5 + 2 + 20) / 4)


def test_per_class_accuracy():
    assert per_class_accuracy(np.array([0, 1, 1]), np.array([0, 1, 0]), 3) == [50.0, 100.0, None]


def test_mia_efficacy_separates_members_from_non_members():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.9, 1.0, 200)       # confident on training samples
    non_members = rng.uniform(0.0, 0.5, 300)   # unconfident on unseen samples
    assert mia_efficacy(members, non_members, rng.uniform(0.0, 0.4, 50)) == pytest.approx(100.0)
    assert mia_efficacy(members, non_members, rng.uniform(0.92, 1.0, 50)) == pytest.approx(0.0)
    mixed = np.concatenate([rng.uniform(0.0, 0.4, 30), rng.uniform(0.92, 1.0, 10)])
    assert mia_efficacy(members, non_members, mixed) == pytest.approx(75.0)


def test_mia_efficacy_matches_an_independent_svc():
    from sklearn.svm import SVC

    rng = np.random.default_rng(1)
    retain, test, forget = rng.beta(5, 1, 100), rng.beta(2, 2, 100), rng.beta(3, 2, 40)
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(np.r_[retain, test].reshape(-1, 1), np.r_[np.ones(100), np.zeros(100)])
    expected = (clf.predict(forget.reshape(-1, 1)) == 0).mean() * 100
    assert mia_efficacy(retain, test, forget) == pytest.approx(expected)


def test_class_wise_mia_leaves_the_forgotten_class_out_of_the_non_members():
    """As the reference (Unlearn-Sparse removes the forgotten class from its test set), the
    class-wise MIA's non-members are the test samples of the *other* classes."""
    import torch

    from obliviate.models.vision import DigitsCNN
    from obliviate.pipelines import vision
    from tests.unit.methods.vision_helpers import digits

    data = digits()
    torch.manual_seed(0)
    model = DigitsCNN(num_classes=10, in_chans=1, width=4).eval()
    split = vision.split_forget(data, {"forget_class": 3}, 0)
    metrics, _ = vision.evaluate(model, split, data.test, 10, seed=0)
    conf = {name: vision.predict(model, ds)["confidence"] for name, ds in (("forget", split.forget), ("retain", split.retain))}
    test = vision.predict(model, data.test)
    others = test["label"] != 3
    assert 0 < others.sum() < len(others)
    assert metrics["MIA"] == mia_efficacy(conf["retain"], test["confidence"][others], conf["forget"], seed=0)
    # random forgetting keeps every test sample
    rsplit = vision.split_forget(data, {"forget_fraction": 0.1}, 0)
    rmetrics, _ = vision.evaluate(model, rsplit, data.test, 10, seed=0)
    assert rmetrics["MIA"] == mia_efficacy(vision.predict(model, rsplit.retain)["confidence"], test["confidence"],
                                           vision.predict(model, rsplit.forget)["confidence"], seed=0)
