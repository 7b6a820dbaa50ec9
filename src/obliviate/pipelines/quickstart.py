"""``obliviate quickstart``: every vision method on digits, random and class-wise forgetting."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from obliviate.io import atomic_write_json
from obliviate.methods import METHODS
from obliviate.pipelines import vision
from obliviate.report.table import format_table

log = logging.getLogger(__name__)

COLUMNS = [("method", "method"), ("UA", "UA"), ("RA", "RA"), ("TA", "TA"), ("MIA", "MIA"), ("avg_gap", "Avg. Gap"), ("rte_s", "RTE (s)")]
SELECTION_KEYS = ("forget_class", "forget_count", "forget_fraction", "forget_index_file")


def _row(method: str, m: dict[str, Any], rte: float | None) -> dict[str, Any]:
    return {"method": method, **{k: m.get(k) for k in ("UA", "RA", "TA", "MIA", "avg_gap")}, "rte_s": rte,
            **({"TA_forget_class": m["TA_forget_class"]} if "TA_forget_class" in m else {})}


def run_quickstart(cfg: DictConfig, run_dir: Path, compose_method: Callable[[str, dict], DictConfig]) -> dict[str, Any]:
    """Run the quickstart and write ``run_dir/summary.json``.

    Args:
        cfg: The composed quickstart config.
        run_dir: Output directory.
        compose_method: ``(method, selection) -> cfg`` giving the full config of one
            unlearning run (the same config ``obliviate unlearn trainer=<method>`` would see).
    """
    methods = list(cfg.quickstart.methods or METHODS.names(tracks="vision"))
    data = vision.load_data(cfg)
    seed = int(cfg.seed)
    # The original model does not depend on the forget set: train it once.
    first = OmegaConf.to_container(cfg.quickstart.settings[0], resolve=True)
    base = compose_method(methods[0], {k: v for k, v in first.items() if k in SELECTION_KEYS})
    original = vision.build_model(base, data, seed)
    if cfg.get("original_checkpoint"):
        from obliviate.checkpoint import load_model

        load_model(original, cfg.original_checkpoint)
        original_time = None
    else:
        log.info("training the original model on %d samples", len(data.train))
        original_time = vision.train_classifier(original, data.train.with_augment(data.augment_train), cfg.train.args,
                                                run_dir / "original", seed, data.num_classes)
        from obliviate.checkpoint import save_model

        save_model(original, run_dir / "original" / "model.safetensors")
    summary: dict[str, Any] = {"dataset": cfg.data.name, "model": cfg.model.builder, "seed": seed, "settings": []}
    tables = []
    for setting in cfg.quickstart.settings:
        setting = OmegaConf.to_container(setting, resolve=True)
        name = setting.pop("setting")
        selection = {k: v for k, v in setting.items() if k in SELECTION_KEYS}
        setting_dir = run_dir / name
        split = vision.split_forget(data, selection, seed)
        refs = vision.obtain_reference_models(compose_method(methods[0], selection), data, split, setting_dir,
                                              original=original, original_time=original_time)
        rows, retrain = [], None
        for method in methods:
            log.info("[%s] unlearning with %s", name, method)
            mcfg = compose_method(method, selection)
            res = vision.run_unlearning(mcfg, setting_dir / method, data=data, refs=refs, split=split, save_checkpoint=False)
            if retrain is None:
                retrain = res["retrain"]
                rows.append(_row("original", res["original"], None))
            rows.append(_row(method, res["unlearned"], res["unlearned"]["rte_s"]))
        summary["settings"].append({"setting": name, "selection": selection, "n_forget": len(split.forget_idx),
                                    "retrain": {**_row("retrain", retrain, refs.get("retrain_time_s")), "avg_gap": 0.0}, "rows": rows})
        table = format_table([*rows, summary["settings"][-1]["retrain"]], COLUMNS)
        tables.append(f"\n## {name} (forget {len(split.forget_idx)} of {len(data.train)} training samples)\n\n{table}")
        atomic_write_json(run_dir / "summary.json", summary)
    print("\n".join(tables))
    print(f"\nsummary: {run_dir / 'summary.json'}")
    return summary
