"""How much the loss reductions matter: token vs per-sequence means on one real TOFU batch.

On SmolLM2-135M-Instruct and the first ``--batch`` rows of TOFU forget10 / retain90 (the
local copy in ``../shared/data/tofu``), prints GradDiff's forget term ``-NLL_f`` and the KL
retain term with the reference framework's reductions (``reduction=token``: token mean over
the batch's answer tokens; KL(p_ref || p_θ) over every non-padding position) and obliviate's
earlier ones (``reduction=sequence``: per-sequence means; KL(p_θ || p_ref) on answer tokens),
and their ratio. The KL needs a model that differs from its reference: θ is the model after
``--steps`` GradDiff steps (AdamW, ``--lr``) on that batch.

Run: ``.venv/bin/python bench/llm_reductions.py [--tofu ../shared/data/tofu] [--batch 8] [--steps 3]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tofu", default=str(ROOT.parent / "shared" / "data" / "tofu"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from obliviate.data.text import DataCollatorForSupervisedDataset, build_text_dataset, resolve_dataset_spec
    from obliviate.engine.trainer import frozen_copy
    from obliviate.methods import MethodContext, build_method
    from obliviate.methods._common import nll_term, retain_loss
    from obliviate.models.adapters import CausalLMAdapter
    from obliviate.models.llm import load_causal_lm

    t0 = time.perf_counter()
    cfg = yaml.safe_load((ROOT / "src/obliviate/configs/model/SmolLM2-135M-Instruct.yaml").read_text())
    cfg["tokenizer_args"]["pretrained_model_name_or_path"] = cfg["model_args"]["pretrained_model_name_or_path"]
    model, tok = load_causal_lm(cfg)
    collate = DataCollatorForSupervisedDataset(tok)
    batch = {}
    for side, name in (("forget", "TOFU_QA_FORGET10"), ("retain", "TOFU_QA_RETAIN90")):
        ds_name, spec = resolve_dataset_spec(name, {"tofu": args.tofu})
        ds = build_text_dataset(ds_name, spec, tok, cfg["template_args"])
        full = collate([ds[i] for i in range(args.batch)])
        batch[side] = {k: full[k] for k in ("input_ids", "attention_mask", "labels")}
    print(f"loaded model and data in {time.perf_counter() - t0:.0f} s; forget answer tokens per row "
          f"{(batch['forget']['labels'] != -100).sum(-1).tolist()}, retain {(batch['retain']['labels'] != -100).sum(-1).tolist()}")

    ref = frozen_copy(model)
    ctx = MethodContext(adapter=CausalLMAdapter(), ref_model=ref)
    method = build_method("GradDiff", {})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    model.train()
    for step in range(args.steps):
        loss, logs = method.loss(model, batch, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"GradDiff step {step + 1}: loss {loss.item():.4f} {logs}")
    model.eval()
    with torch.no_grad():
        rows = []
        for red in ("sequence", "token"):
            forget = -nll_term(model, batch["forget"], ctx, red).item()
            kl = retain_loss(model, batch, ctx, "KL", red).item()
            rows.append((red, forget, kl))
    print("\n| reduction | GradDiff forget term -NLL_f | KL retain term |\n|---|---:|---:|")
    for red, forget, kl in rows:
        print(f"| {red} | {forget:.4f} | {kl:.4f} |")
    (_, f_old, k_old), (_, f_new, k_new) = rows
    print(f"| token / sequence | {f_new / f_old:.3f} | {k_new / k_old:.3f} |")


if __name__ == "__main__":
    main()
