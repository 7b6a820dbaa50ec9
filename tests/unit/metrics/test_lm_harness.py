"""lm-evaluation-harness wrapper: local-file task overrides (offline) and accuracy equal to an
independent log-likelihood computation of the harness's multiple-choice protocol."""

from __future__ import annotations

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")

from obliviate.data.text.rawtext import read_rows_file  # noqa: E402
from obliviate.data.text.synthetic_bench import write_synthetic_wmdp  # noqa: E402
from obliviate.errors import ConfigError, DataError  # noqa: E402
from obliviate.metrics.lm_harness import evaluate_lm_harness, leaf_tasks, local_overrides, summarize, task_manager  # noqa: E402
from obliviate.models.llm import load_causal_lm  # noqa: E402


@pytest.fixture(scope="module")
def wmdp(tmp_path_factory):
    return write_synthetic_wmdp(tmp_path_factory.mktemp("wmdp") / "data", n_questions=5)


@pytest.fixture(scope="module")
def tm():
    return task_manager(["wmdp", "mmlu/default"])


def test_groups_expand_to_their_tasks(tm):
    assert leaf_tasks(tm, "wmdp") == ["wmdp_bio", "wmdp_chem", "wmdp_cyber"]
    assert leaf_tasks(tm, "wmdp_cyber") == ["wmdp_cyber"]
    assert "mmlu_anatomy" in leaf_tasks(tm, "mmlu") and len(leaf_tasks(tm, "mmlu")) == 57
    with pytest.raises(ConfigError, match="lm-eval task 'wmdp_cybr' is unknown.*Did you mean: wmdp_cyber"):
        leaf_tasks(tm, "wmdp_cybr")


def test_local_overrides_swap_only_the_data_source(tm, wmdp, tmp_path):
    local = local_overrides(tm, ["wmdp"], {"cais/wmdp": str(wmdp)}, tmp_path)
    assert sorted(local) == ["wmdp_bio", "wmdp_chem", "wmdp_cyber"]
    cfg = yaml.safe_load((tmp_path / "wmdp_bio.yaml").read_text())
    assert cfg["include"].endswith("lm_eval/tasks/wmdp/wmdp_bio.yaml") and cfg["task"] == "wmdp_bio"
    assert cfg["dataset_path"] == "parquet" and cfg["dataset_kwargs"]["data_files"] == {"test": [str(wmdp / "wmdp-bio" / "test-00000-of-00001.parquet")]}
    # MMLU: test and dev (few-shot) splits found; validation absent -> null
    mm = local_overrides(tm, ["mmlu_anatomy"], {"cais/mmlu": str(wmdp / "mmlu")}, tmp_path / "m")
    cfg = yaml.safe_load((tmp_path / "m" / "mmlu_anatomy.yaml").read_text())
    assert set(mm["mmlu_anatomy"]["data_files"]) == {"test", "dev"} and cfg.get("validation_split", "absent") in (None, "absent")
    # unmapped datasets and folders without a task's files stay on the hub
    assert local_overrides(tm, ["wmdp_bio"], {"cais/mmlu": str(wmdp)}, tmp_path / "n") == {}
    assert local_overrides(tm, ["mmlu_astronomy"], {"cais/mmlu": str(wmdp / "mmlu")}, tmp_path / "o") == {}
    (wmdp / "mmlu" / "virology").mkdir()
    with pytest.raises(DataError, match="no test split in .*virology"):
        local_overrides(tm, ["mmlu_virology"], {"cais/mmlu": str(wmdp / "mmlu")}, tmp_path / "p")


def test_summarize_reads_groups_and_tasks_like_the_reference():
    res = {"results": {"wmdp_bio": {"alias": "wmdp_bio", "acc,none": 0.25, "acc_stderr,none": 0.1}},
           "groups": {"mmlu": {"alias": "mmlu", "acc,none": 0.4, "acc_stderr,none": 0.01}}}
    assert summarize(res, "wmdp_bio", ["mmlu"]) == {"wmdp_bio/acc": 0.25, "wmdp_bio/acc_stderr": 0.1}
    assert summarize(res, "mmlu", ["mmlu"]) == {"mmlu/acc": 0.4, "mmlu/acc_stderr": 0.01}


@torch.no_grad()
def _oracle_accuracy(model, tok, rows, description):
    """The harness's multiple-choice protocol by hand: argmax over choices of log p(" X" | context)."""
    hits = []
    for r in rows:
        ctx = description + r["question"].strip() + "".join(f"\n{c}. {t}" for c, t in zip("ABCD", r["choices"])) + "\nAnswer:"
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        lls = []
        for letter in "ABCD":
            cont = tok(ctx + " " + letter, add_special_tokens=False)["input_ids"][len(ctx_ids):]
            ids = torch.tensor([ctx_ids + cont])
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            lls.append(sum(float(logp[len(ctx_ids) - 1 + j, t]) for j, t in enumerate(cont)))
        hits.append(int(max(range(4), key=lambda i: lls[i]) == r["answer"]))
    return sum(hits) / len(hits)


def test_accuracy_equals_the_multiple_choice_protocol_computed_by_hand(wmdp, tmp_path):
    model, tok = load_causal_lm({"builder": "tiny-llama", "config_args": {"init_seed": 5}})
    model.train()
    import json

    mmlu_json = tmp_path / "mmlu_json" / "anatomy"  # MMLU as JSON Lines, WMDP as the hub's parquet files
    mmlu_json.mkdir(parents=True)
    for split in ("test", "dev"):
        rows = read_rows_file(wmdp / "mmlu" / "anatomy" / f"{split}-00000-of-00001.parquet")
        (mmlu_json / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs, summary, local = evaluate_lm_harness(model, tok, ["wmdp_bio", "mmlu_anatomy"], local_data={"cais/wmdp": str(wmdp), "cais/mmlu": str(mmlu_json.parent)},
                                               task_dirs=["wmdp", "mmlu/default"], work_dir=tmp_path / "work", batch_size=3)
    assert local["mmlu_anatomy"]["dataset_path"] == "json" and local["wmdp_bio"]["dataset_path"] == "parquet"
    assert set(local) == {"wmdp_bio", "mmlu_anatomy"} and len(logs["wmdp_bio"]["wmdp_bio"]) == 5  # the reference nesting
    bio = read_rows_file(wmdp / "wmdp-bio" / "test-00000-of-00001.parquet")
    anatomy = read_rows_file(wmdp / "mmlu" / "anatomy" / "test-00000-of-00001.parquet")
    assert summary["wmdp_bio/acc"] == pytest.approx(
        _oracle_accuracy(model, tok, bio, "The following are multiple choice questions (with answers) about biology.\n\n"))
    assert summary["mmlu_anatomy/acc"] == pytest.approx(
        _oracle_accuracy(model, tok, anatomy, "The following are multiple choice questions (with answers) about anatomy.\n\n"))
    assert model.training  # train mode restored after the evaluation
