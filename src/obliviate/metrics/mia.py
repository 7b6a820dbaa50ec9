"""Membership-inference efficacy for classifiers (DESIGN §6).

An RBF SVC (C=3, gamma="auto") is trained on the true-class softmax confidence of retain
samples (members, label 1) against test samples (non-members, label 0), with balanced
counts (the larger set is subsampled with a seed). MIA-efficacy is the percentage of forget
samples the SVC predicts as *non-members* (higher = the forget set looks unseen).

In class-wise forgetting the caller passes the test samples *without* the forgotten
classes as non-members, as the reference does (Unlearn-Sparse removes the forgotten class
from its test set, so its SVC never learns "forgotten class = non-member" from the test
images of that class).
"""

from __future__ import annotations

import numpy as np

from obliviate.registry import METRICS


@METRICS.register("MIA", track="vision", higher_is_better=None, needs=("forget", "retain", "test"))
def mia_efficacy(conf_retain: np.ndarray, conf_test: np.ndarray, conf_forget: np.ndarray, seed: int = 0) -> float:
    """Percentage of forget samples that the retain-vs-test SVC calls non-members.

    Args:
        conf_retain: True-class confidences of retain samples (members).
        conf_test: True-class confidences of test samples (non-members; in class-wise
            forgetting without the forgotten classes).
        conf_forget: True-class confidences of the forget samples to classify.
        seed: Seed of the balancing subsample.
    """
    from sklearn.svm import SVC

    conf_retain, conf_test, conf_forget = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (conf_retain, conf_test, conf_forget))
    if len(conf_forget) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    n = min(len(conf_retain), len(conf_test))
    members = conf_retain[rng.choice(len(conf_retain), n, replace=False)] if len(conf_retain) > n else conf_retain
    non_members = conf_test[rng.choice(len(conf_test), n, replace=False)] if len(conf_test) > n else conf_test
    x = np.concatenate([members, non_members]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    if len(np.unique(y)) < 2:
        return float("nan")
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    return float((clf.predict(conf_forget.reshape(-1, 1)) == 0).mean() * 100.0)
