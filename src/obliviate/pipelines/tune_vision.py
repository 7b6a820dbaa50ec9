"""The vision track of ``obliviate tune``: held-out images, the original model, trials, validation.

Data: the forget set is selected exactly as ``obliviate unlearn`` selects it (same overrides,
same seed); then a stratified, seeded ``tune.holdout_fraction`` of the retain side (or the
training-split positions of ``tune.holdout_index_file``) is **held out**: no model that tune
trains sees those images (the original is trained on forget + the remaining retain images, the
retrained model on the remaining retain images), and unlearning's retain set excludes them.
They are the never-seen data of the retrain-free objective. The test split is loaded with the
data set but only the validation, ``tune.objective=retrain`` and ``tune.record_oracle`` use it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from obliviate.checkpoint import load_model, save_model
from obliviate.data.vision import TensorImageDataset
from obliviate.errors import ConfigError, DataError
from obliviate.io import atomic_write_json, read_json
from obliviate.metrics.classification import accuracy
from obliviate.metrics.retrain_free import DEFAULT_TOLERANCE, reference_labels, vision_objective
from obliviate.pipelines import vision
from obliviate.pipelines.common import forget_selection
from obliviate.pipelines.study import file_lock

log = logging.getLogger(__name__)


def choose_heldout(labels: np.ndarray, retain_pos: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified seeded sample of ``fraction`` of the retain positions (at least one per class present).

    Args:
        labels: Labels of the whole training split.
        retain_pos: Training-split positions of the retain set.
        fraction: Share held out, in (0, 1).
        seed: Sampling seed.

    Returns:
        Sorted positions (a subset of ``retain_pos``).
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"tune.holdout_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels[retain_pos]):
        pos = retain_pos[labels[retain_pos] == c]
        k = max(1, int(round(fraction * len(pos)))) if len(pos) > 1 else 0
        picked.append(rng.choice(pos, size=k, replace=False))
    out = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    if len(out) < 2:
        raise DataError(f"the held-out set would hold {len(out)} image(s); raise tune.holdout_fraction (now {fraction})")
    return out.astype(np.int64)


def _relabelled(ds: TensorImageDataset, labels: np.ndarray) -> TensorImageDataset:
    """The same images with other labels (a new dataset; ``ds`` is not modified)."""
    return TensorImageDataset(ds.images, torch.as_tensor(labels, dtype=torch.long), mean=tuple(ds.mean.flatten().tolist()),
                              std=tuple(ds.std.flatten().tolist()), indices=ds.indices)


class VisionProblem:
    """Everything the vision trials share (built once per process).

    Args:
        cfg: The preset-applied tune config.
        out_dir: The tune run dir (reference models go to ``references/``).
        s: The tune settings.
    """

    def __init__(self, cfg: DictConfig, out_dir: Path, s: Any) -> None:
        self.cfg, self.out_dir, self.s = cfg, Path(out_dir), s
        self.seed = int(cfg.seed)
        self.tolerance = DEFAULT_TOLERANCE["vision"] if s.tolerance is None else s.tolerance
        data = vision.load_data(cfg)
        full = vision.split_forget(data, forget_selection(cfg), self.seed)
        labels = data.train.labels.numpy()
        hfile = cfg.tune.get("holdout_index_file")
        if cfg.get("original_checkpoint") and not hfile:
            raise ConfigError("original_checkpoint is given, so tune cannot know which training images it never saw: pass "
                              "tune.holdout_index_file=FILE (training-split indices left out of its training), or drop "
                              "original_checkpoint and let tune train the original without its held-out images")
        if hfile:
            from obliviate.data.selection import read_index_file

            held = read_index_file(hfile, len(labels))
            clash = np.intersect1d(held, full.forget_idx)
            if len(clash):
                raise DataError(f"tune.holdout_index_file lists forget-set index {int(clash[0])}; held-out images must not be forgotten ones")
        else:
            held = choose_heldout(labels, full.retain_idx, float(cfg.tune.get("holdout_fraction", 0.1)), self.seed)
        retain = np.setdiff1d(full.retain_idx, held)
        self.split = vision.Split(full.forget_idx, retain, full.forget_classes, data.train.subset(full.forget_idx),
                                  data.train.subset(retain))
        self.heldout = data.train.subset(held, augment=False)
        self.reference = _relabelled(self.heldout, reference_labels(labels[held], full.forget_classes, self.seed))
        self.data = dataclasses.replace(data, train=data.train.subset(np.sort(np.concatenate([full.forget_idx, retain]))))
        self.heldout_idx = held
        self.original, self.original_time = self._reference_model("original")
        cap = cfg.tune.get("max_retain_eval")
        n_retain = len(self.split.retain)
        rows = np.sort(np.random.default_rng(self.seed).choice(n_retain, int(cap), replace=False)) if cap and n_retain > int(cap) else None
        self.retain_eval = self.split.retain if rows is None else self.split.retain.subset(rows)  # RA and the attacker's members
        self.ra_original = accuracy(*self._pl(self.original, self.retain_eval))
        self.ha_original = accuracy(*self._pl(self.original, self.heldout))
        self.retrain: nn.Module | None = None
        self.retrain_time: float | None = None
        self._retrain_metrics: dict[str, Any] | None = None
        if s.objective == "retrain" or s.record_oracle:
            self._load_retrain()

    # ------------------------------------------------------------------ references
    def identity(self) -> dict[str, Any]:
        """What the study's trials depend on (a rerun with other data is refused)."""
        return {"forget": forget_selection(self.cfg), "n_forget": int(len(self.split.forget_idx)), "n_retain": int(len(self.split.retain_idx)),
                "n_retain_eval": int(len(self.retain_eval)),
                "n_heldout": int(len(self.heldout_idx)), "heldout_sha": _sha(self.heldout_idx), "seed": self.seed,
                "forget_classes": list(self.split.forget_classes)}

    def data_files(self) -> dict[str, str]:
        """Data files and given checkpoints (hashed into the run manifest)."""
        given = {f"{k}_checkpoint": str(self.cfg[k + "_checkpoint"]) for k in ("original", "retrain") if self.cfg.get(k + "_checkpoint")}
        return {**self.data.files, **given}

    def _reference_model(self, stage: str) -> tuple[nn.Module, float | None]:
        """Load ``<stage>_checkpoint`` or train the model once under ``references/<stage>`` (file lock)."""
        model = vision.build_model(self.cfg, self.data, self.seed)
        given = self.cfg.get(f"{stage}_checkpoint")
        if given:
            load_model(model, given)
            model.eval()
            return model, None
        ref = self.out_dir / "references" / stage
        with file_lock(self.out_dir / ".references.lock"):
            info = ref / "train_info.json"
            if info.is_file() and read_json(info).get("heldout_sha") != _sha(self.heldout_idx):
                raise ConfigError(f"{ref} was trained with another held-out set; choose another paths.output_dir")
            if not (ref / "model.safetensors").is_file():
                ds = (self.data.train if stage == "original" else self.split.retain).with_augment(self.data.augment_train)
                log.info("training the %s model on %d images (%d held-out images left out)", stage, len(ds), len(self.heldout_idx))
                seconds = vision.train_classifier(model, ds, self.cfg.train.args, ref, self.seed, self.data.num_classes)
                save_model(model, ref / "model.safetensors")
                atomic_write_json(info, {"seconds": seconds, "samples": len(ds), "heldout_sha": _sha(self.heldout_idx)})
            else:
                load_model(model, ref / "model.safetensors")
        model.eval()
        return model, read_json(ref / "train_info.json").get("seconds")

    def _load_retrain(self) -> None:
        if self.retrain is None:
            self.retrain, self.retrain_time = self._reference_model("retrain")
            self._retrain_metrics = vision.evaluate(self.retrain, self.split, self.data.test, self.data.num_classes, self.seed)[0]

    def reference_name(self) -> str:
        given = self.cfg.get("retrain_checkpoint")
        return str(given) if given else str(self.out_dir / "references" / "retrain")

    # ------------------------------------------------------------------ objective
    @staticmethod
    def _pl(model: nn.Module, ds: TensorImageDataset) -> tuple[np.ndarray, np.ndarray]:
        p = vision.predict(model, ds)
        return p["pred"], p["label"]

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The objective's terms for ``model`` (train mode is restored)."""
        was = model.training
        try:
            if self.s.objective == "retrain":
                metrics = vision.evaluate(model, self.split, self.data.test, self.data.num_classes, self.seed)[0]
                gap = vision.with_gap(metrics, self._retrain_metrics)
                return {**{k: gap[k] for k in ("UA", "RA", "TA", "MIA")}, "objective": gap["avg_gap"]}
            f, r = vision.predict(model, self.split.forget), vision.predict(model, self.retain_eval)
            h = vision.predict(model, self.heldout)
            ref = h if not self.split.forget_classes else vision.predict(model, self.reference)
            return vision_objective(f, ref, r["confidence"], h["confidence"], accuracy(r["pred"], r["label"]), self.ra_original,
                                    accuracy(h["pred"], h["label"]), self.ha_original, tolerance=self.tolerance,
                                    weight=self.s.penalty_weight, seed=self.seed)
        finally:
            model.train(was)

    def oracle(self, model: nn.Module) -> dict[str, Any]:
        """UA / RA / TA / MIA / Avg. Gap against the retrained model (``tune.record_oracle``)."""
        metrics = vision.evaluate(model, self.split, self.data.test, self.data.num_classes, self.seed)[0]
        gap = vision.with_gap(metrics, self._retrain_metrics)
        return {k: gap[k] for k in ("UA", "RA", "TA", "MIA", "avg_gap")}

    # ------------------------------------------------------------------ trials
    def run_trial(self, cfg: DictConfig, trial_dir: Path, reporter: Any) -> dict[str, Any]:
        """Unlearn a copy of the original with ``cfg``; returns ``{"terms", "oracle", "status"}``."""
        from obliviate.engine import build_trainer
        from obliviate.engine.guard import DivergenceGuard, make_guard_config
        from obliviate.pipelines.prune import finalize_model, prepare_model

        handler = str(cfg.trainer.handler)
        method_args = OmegaConf.to_container(cfg.trainer.method_args, resolve=True) if cfg.trainer.get("method_args") is not None else {}
        build_trainer(handler, method_args)
        model = copy.deepcopy(self.original)
        model, transforms = prepare_model(cfg, model, self.data, trial_dir, self.seed, split=self.split)
        guard = DivergenceGuard(make_guard_config(cfg.get("divergence")))
        args = OmegaConf.to_container(cfg.trainer.args, resolve=True)
        args["disable_tqdm"] = True
        model, _, history = vision.unlearn(model, handler, method_args, self.split, args, trial_dir, self.seed, self.data.num_classes,
                                           guard=guard, callbacks=[reporter])
        model = finalize_model(model, transforms, trial_dir)
        step = max([int(h.get("step", 0)) for h in history] or [0])
        terms = None if guard.diverged else reporter.cached(step)
        terms = terms if terms is not None else self.evaluate(model)
        return {"terms": terms, "oracle": self.oracle(model) if self.s.record_oracle else None,
                "status": "diverged" if guard.diverged else "completed"}

    # ------------------------------------------------------------------ validation
    def validation_unavailable(self, mode: str) -> str | None:
        """Why no validation runs (``None``: it runs; ``tune.validate=true`` trains the retrained model)."""
        if mode == "false":
            return "tune.validate=false"
        if mode == "auto" and not self.cfg.get("retrain_checkpoint") and not (self.out_dir / "references" / "retrain" / "model.safetensors").is_file():
            return "no retrained model: pass retrain_checkpoint=... (trained without the held-out images) or tune.validate=true"
        self._load_retrain()
        return None

    def reference_objectives(self) -> dict[str, float]:
        """The objective of the original (doing nothing) and of the retrained model (the gold
        standard, ideally 0): how well the retrain-free objective sees the goal on this data."""
        out = {"original": float(self.evaluate(self.original)["objective"])}
        if self.retrain is not None:
            out["retrain"] = float(self.evaluate(self.retrain)["objective"])
        return out

    def validate(self, cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
        """One full unlearning run (``obliviate unlearn``'s metrics) with the tune split and models."""
        refs = {"original": self.original, "original_time_s": self.original_time, "retrain": self.retrain, "retrain_time_s": self.retrain_time}
        run_dir.mkdir(parents=True, exist_ok=True)
        return vision.run_unlearning(cfg, run_dir, data=self.data, refs=refs, split=self.split, save_checkpoint=False)

    @staticmethod
    def validation_metrics(res: dict[str, Any]) -> dict[str, Any]:
        from obliviate.pipelines.tune import VALIDATION_KEYS

        return {k: res["unlearned"].get(k) for k in VALIDATION_KEYS["vision"]}


def _sha(idx: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()[:16]
