"""docs/index.md, the getting-started path: every command of the page, in order, on tiny data.

`my_images/` (3 classes, 6 + 3 images each), `my_qa/` (3 forget, 6 retain, 3 holdout pairs
with paraphrased / perturbed answers) and a tiny saved Llama stand in for the user's data and
model; training runs are shortened with `train.args.num_train_epochs`. The install commands
are covered by tests/unit/scripts/test_setup_env.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.shell_examples import shell_commands
from tests.unit.core.test_imagefolder import make_image_folder
from tests.unit.llm.test_qa_jsonl import write_qa_folder

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "index.md"
USER_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Command prefix -> overrides appended to keep the run tiny (the page's settings are real ones).
SHORTER = {
    "obliviate quickstart track=llm": ["train.args.num_train_epochs=3", "quickstart.methods=[GradDiff]"],
    "obliviate quickstart": ["train.args.num_train_epochs=2", "'quickstart.settings=[{setting:class_9,forget_class:9}]'"],
    "obliviate train data=imagefolder": ["train.args.num_train_epochs=3"],
    "obliviate train experiment=llm": ["train.args.num_train_epochs=2"],
    "obliviate unlearn experiment=llm": ["trainer.args.num_train_epochs=2"],
}
SKIPPED = ("bash scripts/setup_env.sh", "source .venv/bin/activate")


def tiny_hf_model(path: Path) -> Path:
    """A 2-layer Llama with its tokenizer, saved like any Hugging Face model folder."""
    from obliviate.models.llm import load_causal_lm, save_causal_lm

    model, tokenizer = load_causal_lm({"builder": "tiny-llama", "template_args": {"apply_chat_template": True},
                                       "config_args": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                                       "num_attention_heads": 2, "num_key_value_heads": 1}})
    save_causal_lm(model, tokenizer, path)
    return path


def environment() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # the venv's `obliviate`
    src = str(REPO / "src")
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_every_command_of_the_getting_started_page(tmp_path):
    commands = shell_commands(PAGE)
    assert len(commands) >= 10 and all(c.skip is None for c in commands)
    make_image_folder(tmp_path / "my_images")
    write_qa_folder(tmp_path / "my_qa")
    model = tiny_hf_model(tmp_path / "tiny_model")
    env = {**environment(), "OBLIVIATE_CACHE": str(tmp_path / "cache")}
    ran = []
    for cmd in commands:
        if cmd.text in SKIPPED:
            continue
        text = cmd.text.replace(USER_MODEL, str(model))
        extra = next((o for prefix, o in SHORTER.items() if text.startswith(prefix)), [])
        full = " ".join([text, *extra, f"paths.cache_dir={tmp_path / 'cache'}" if text.split()[1] not in ("compare", "report") else ""])
        proc = subprocess.run(["bash", "-c", full], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"docs/index.md line {cmd.line}: {cmd.text}\n{output[-3000:]}"
        assert "Traceback" not in output, f"docs/index.md line {cmd.line}\n{output[-3000:]}"
        if text.split()[1] not in ("compare", "report"):
            assert "run dir: outputs/" in proc.stdout, f"line {cmd.line}: no run dir printed"
        ran.append((cmd, proc.stdout))
    # the path's results: both reference models, two unlearned image models, the LLM run scored against its retrained model
    out = tmp_path / "outputs"
    assert (out / "train-my_images-classcat" / "retrain" / "model.safetensors").is_file()
    assert {p.name for p in out.glob("unlearn-*-my_images-classcat")} == {"unlearn-RL-my_images-classcat", "unlearn-SalUn-my_images-classcat"}
    compare_out = next(stdout for cmd, stdout in ran if cmd.text.startswith("obliviate compare"))
    npo_row = next(line for line in compare_out.splitlines() if line.startswith("| unlearn-NPO-my_qa"))
    cells = [c.strip() for c in npo_row.strip("|").split("|")]
    assert all(c != "-" for c in cells[2:6]), npo_row  # answer probabilities before / after
    import json

    summary = json.loads((out / "unlearn-NPO-my_qa" / "TOFU_SUMMARY.json").read_text())
    assert summary["forget_quality"] is not None  # scored against the retrained model's TOFU_EVAL.json
    assert (tmp_path / "my_report.html").stat().st_size > 10_000
