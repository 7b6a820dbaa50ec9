"""``obliviate quickstart track=llm``: the offline LLM demo.

Fine-tunes tiny-llama on the ``full`` split of the synthetic fictitious authors
(``experiment/llm/tofu_synthetic``, no downloads) -- the *target* model -- then unlearns
forget10 from it with each method of ``quickstart.methods``; every unlearning run is the one
``obliviate unlearn experiment=llm/tofu_synthetic trainer=<method>`` would do, in
``<output_dir>/<method>/``. Prints the forget / retain answer probability
(``p = exp(-mean answer NLL)`` per sample, averaged over samples) before and after, and
writes ``<output_dir>/summary.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from obliviate.engine.progress import progress_label
from obliviate.io import atomic_write_json
from obliviate.run import Run
from obliviate.pipelines import llm, llm_stages
from obliviate.pipelines.common import plain
from obliviate.report.table import format_table

log = logging.getLogger(__name__)

COLUMNS = [("method", "method"), ("forget_prob_before", "forget p before"), ("forget_prob_after", "forget p after"),
           ("retain_prob_before", "retain p before"), ("retain_prob_after", "retain p after"), ("time_s", "time (s)")]
# Command-line overrides of the quickstart that do not reach the unlearning runs (the
# quickstart sets them itself); trainer.args.* / trainer.method_args.* apply to every method.
_DROPPED = ("track", "experiment", "quickstart", "paths.output_dir", "model.model_args.pretrained_model_name_or_path", "train")


def answer_prob(nll: list[float]) -> float:
    """Mean over samples of ``exp(-mean answer NLL)`` (as :func:`obliviate.pipelines.llm_stages.answer_probs`)."""
    return llm_stages.answer_probs({"x": list(nll)})["x"]


def compose_unlearn(compose: Callable[..., DictConfig], method: str, overrides: list[str], extra: list[str]) -> DictConfig:
    """Config of ``obliviate unlearn experiment=llm/tofu_synthetic trainer=<method>`` with the
    user's quickstart overrides (but those of :data:`_DROPPED`) and ``extra``."""
    from obliviate.pipelines.common import apply_method_preset

    def kept(o: str) -> bool:
        key = o.split("=", 1)[0].lstrip("+~")
        if key == "trainer" or (key.startswith("trainer.") and not key.startswith(("trainer.args.", "trainer.method_args."))):
            return False
        return not any(key == d or key.startswith(d + ".") for d in _DROPPED)

    sub = compose(config_name="unlearn", overrides=[*filter(kept, overrides), "experiment=llm/tofu_synthetic", f"trainer={method}", *extra])
    return apply_method_preset(sub, sub.get("presets"), method, overrides)


def run_quickstart_llm(cfg: DictConfig, run_dir: Path, compose_unlearn_run: Callable[[str, list[str]], DictConfig]) -> dict[str, Any]:
    """Train the target model, unlearn forget10 with each method; writes ``run_dir/summary.json``.

    Args:
        cfg: The composed quickstart config (``experiment=llm/quickstart``).
        run_dir: Output directory.
        compose_unlearn_run: ``(method, extra overrides) -> cfg`` of one unlearning run.
    """
    methods = list(cfg.quickstart.get("methods") or ["GradDiff"])
    seed = int(cfg.seed)
    paths = llm_stages.text_data_paths(cfg)
    llm_stages.check_sources(cfg, paths)
    model, tokenizer = llm_stages.load_model(cfg)
    full = llm_stages.load_split(cfg, "full", tokenizer, paths=paths)
    forget = llm_stages.load_split(cfg, "forget", tokenizer, paths=paths)
    retain = llm_stages.load_split(cfg, "retain", tokenizer, paths=paths)
    llm_stages.check_forget_retain(forget, retain)
    log.info("training the target model on %d QA pairs", len(full))
    with progress_label("train target"):
        train_s, history = llm.finetune(model, full, llm_stages.make_collator(cfg, tokenizer), cfg.train.args, run_dir / "trainer" / "target", seed)
    target_dir = llm_stages.save_model_dir(model, tokenizer, run_dir / "target", cfg)
    del model
    rows: list[dict[str, Any]] = []
    for method in methods:
        out = run_dir / method
        out.mkdir(parents=True, exist_ok=True)
        sub = compose_unlearn_run(method, [f"model.model_args.pretrained_model_name_or_path={target_dir}", f"paths.output_dir={out}"])
        log.info("unlearning forget10 with %s", method)
        # a complete run dir per method (config.yaml, manifest.json, metrics.json, eval/, model/):
        # `obliviate report` / `obliviate compare` read it like any `obliviate unlearn` run
        with Run(out, sub, "unlearn", overwrite=bool(sub.get("overwrite")), resume=bool(sub.get("resume"))) as run:
            res = llm.run_unlearning(sub, out, run=run)
            run.status = res["status"]
        row: dict[str, Any] = {"method": method}
        for split in ("forget", "retain"):
            for when in ("before", "after"):
                row[f"{split}_prob_{when}"] = res["prob"][when].get(split)
        row.update({k: res[k] for k in ("forget_loss_start", "forget_loss_end", "retain_loss_start", "retain_loss_end")})
        row.update({"status": res["status"], "time_s": res["unlearn_time_s"], "run_dir": str(out)})
        rows.append(row)
    summary = {"track": "llm", "model": cfg.model.get("builder"), "seed": seed, "status": "completed",
               "data": {"full": len(full), "forget": len(forget), "retain": len(retain), "synthetic": plain(cfg.get("synthetic"))},
               "target": {"dir": target_dir, "train_time_s": train_s, "log_history": history}, "rows": rows}
    atomic_write_json(run_dir / "summary.json", summary)
    print(f"tiny-llama, synthetic authors: target model fine-tuned on {len(full)} QA pairs, forget10 = {len(forget)} pairs\n"
          "answer probability p = exp(-mean answer NLL), averaged over samples\n")
    print(format_table(rows, COLUMNS, digits=4))
    print(f"\nsummary: {run_dir / 'summary.json'}")
    return summary
