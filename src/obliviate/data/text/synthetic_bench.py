"""Tiny synthetic MUSE and WMDP data sets in the benchmarks' exact file layouts (tests, offline demos).

The text is generated from templates about fictitious people, places and devices (no real
data). ``python -m obliviate.data.text.synthetic_bench muse DIR`` writes MUSE-News' hub
layout (``<subset>/<split>-00000-of-00001.parquet``; ``layout="muse_bench"`` writes muse_bench's
``<subset>/<split>.json`` arrays instead); ``... wmdp DIR`` writes the WMDP corpora
(``wmdp-corpora/{bio,cyber}-{forget,retain}-corpus.jsonl``) and multiple-choice test sets
(``wmdp-{bio,cyber,chem}/test-00000-of-00001.parquet``: ``question``, ``choices``, ``answer``),
plus an MMLU subject (``mmlu/anatomy/{test,dev}-00000-of-00001.parquet``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.io import atomic_write_text

_FIRST = ["Alder", "Brisa", "Corvin", "Delphine", "Esko", "Farrah", "Gideon", "Halvard", "Ilse", "Jorund", "Kestrel", "Linnea",
          "Mervin", "Nadia", "Osric", "Perrin", "Quilla", "Rowan", "Saoirse", "Tamsin", "Ulric", "Vesna", "Wendell", "Ysolde"]
_LAST = ["Ashgrove", "Blackmere", "Coldwater", "Dunmore", "Everly", "Fairhaven", "Greystone", "Hollowell", "Ironside", "Juniper",
         "Kingsley", "Larkspur", "Marlowe", "Northcott", "Oakridge", "Pemberton"]
_TOWNS = ["Port Wren", "Elmsford", "Castle Brae", "Norhaven", "Silverby", "Tarnwick", "Oldmere", "Kilbride", "Westerholm", "Dunhollow"]
_THINGS = ["a tidal clock", "a glass bridge", "a wind organ", "a salt library", "a copper lighthouse", "a moss garden",
           "a floating market", "a paper observatory", "a stone orchestra", "a silk railway"]
_EVENTS = [("opened", "open"), ("restored", "restore"), ("designed", "design"), ("funded", "fund"), ("rebuilt", "rebuild"),
           ("unveiled", "unveil")]


def _article(rng: np.random.Generator) -> tuple[str, list[tuple[str, str]]]:
    name = f"{_FIRST[rng.integers(len(_FIRST))]} {_LAST[rng.integers(len(_LAST))]}"
    town, thing = _TOWNS[rng.integers(len(_TOWNS))], _THINGS[rng.integers(len(_THINGS))]
    year, (event, verb), n = int(rng.integers(1950, 2024)), _EVENTS[rng.integers(len(_EVENTS))], int(rng.integers(3, 90))
    text = (f"{name} {event} {thing} in {town} in {year}. Local officials said {n} volunteers worked on the project. "
            f"Residents of {town} described the result as unlike anything they had seen. "
            f"{name.split()[0]} told reporters that the idea came from a childhood visit to the coast.")
    qa = [(f"What did {name} {verb} in {town}?", thing),
          (f"In which year did {name} work on {thing}?", str(year)),
          (f"How many volunteers worked on {name}'s project?", str(n))]
    return text, qa


def _write(path: Path, rows: list[Any], layout: str) -> None:
    if layout == "muse_bench":
        atomic_write_text(path.with_suffix(".json"), json.dumps(rows, ensure_ascii=False))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([r if isinstance(r, dict) else {"text": r} for r in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path.parent / f"{path.name}-00000-of-00001.parquet")


def write_synthetic_muse(out_dir: str | Path, n_forget: int = 6, n_retain: int = 6, n_holdout: int = 6, seed: int = 0,
                         layout: str = "hub") -> Path:
    """Write a MUSE-format data set (every subset and split the evaluator and experiments read)."""
    if layout not in ("hub", "muse_bench"):
        raise ValueError(f"layout must be 'hub' or 'muse_bench', got {layout!r}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    forget = [_article(rng) for _ in range(n_forget)]
    retain1 = [_article(rng) for _ in range(n_retain)]
    retain2 = [_article(rng) for _ in range(n_retain)]
    holdout = [_article(rng) for _ in range(n_holdout)]
    texts = {k: [t for t, _ in v] for k, v in {"forget": forget, "retain1": retain1, "retain2": retain2, "holdout": holdout}.items()}
    for split, docs in texts.items():
        _write(out / "raw" / split, docs, layout)
    extra = [_article(rng)[0] for _ in range(3 * n_forget)]
    for k in range(1, 5):  # scalability: growing forget sets; sustainability: successive disjoint ones (as the hub's)
        _write(out / "scal" / f"forget_{k}", texts["forget"] + extra[: (k - 1) * n_forget], layout)
        _write(out / "sust" / f"forget_{k}", texts["forget"] if k == 1 else extra[(k - 2) * n_forget : (k - 1) * n_forget], layout)
    _write(out / "train" / "forget", texts["forget"], layout)
    _write(out / "train" / "retain1", texts["retain1"], layout)
    _write(out / "train" / "retain2", texts["retain2"], layout)
    verb = [{"prompt": t[: len(t) // 2].rsplit(" ", 1)[0], "gt": t[len(t[: len(t) // 2].rsplit(" ", 1)[0]) + 1:]} for t in texts["forget"]]
    _write(out / "verbmem" / "forget", verb, layout)
    for side, docs in (("forget", forget), ("retain", retain1)):
        qa = [{"question": q, "answer": a} for _, pairs in docs for q, a in pairs[:2]]
        _write(out / "knowmem" / f"{side}_qa", qa[2:], layout)
        _write(out / "knowmem" / f"{side}_qa_icl", qa[:2], layout)
    _write(out / "privleak" / "forget", texts["forget"], layout)
    _write(out / "privleak" / "retain", texts["retain1"], layout)
    _write(out / "privleak" / "holdout", texts["holdout"], layout)
    return out


def _mc_rows(rng: np.random.Generator, topic: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        name = f"{_FIRST[rng.integers(len(_FIRST))]} {_LAST[rng.integers(len(_LAST))]}"
        choices = [str(c) for c in rng.choice(_THINGS, size=4, replace=False)]
        rows.append({"question": f"In {topic} case {i}, which device did {name} describe?", "choices": choices, "answer": int(rng.integers(4))})
    return rows


def write_synthetic_wmdp(out_dir: str | Path, n_docs: int = 6, n_questions: int = 4, seed: int = 0) -> Path:
    """Write WMDP corpora + multiple-choice test sets (and one MMLU subject) in their hub layouts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    corpora = out / "wmdp-corpora"
    for name in ("bio-forget-corpus", "bio-retain-corpus", "cyber-forget-corpus", "cyber-retain-corpus"):
        docs = [_article(rng)[0] for _ in range(n_docs)]
        if name == "bio-forget-corpus":  # the gated bio corpus: title / abstract / text / doi objects
            lines = [json.dumps({"title": d[:20], "abstract": d[:40], "text": d, "doi": f"10.0/{i}"}) for i, d in enumerate(docs)]
        else:
            lines = [json.dumps({"text": d}) for d in docs]
        atomic_write_text(corpora / f"{name}.jsonl", "\n".join(lines) + "\n")
    for sub in ("wmdp-bio", "wmdp-cyber", "wmdp-chem"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(_mc_rows(rng, sub, n_questions)), out / sub / "test-00000-of-00001.parquet")
    for split in ("test", "dev"):
        (out / "mmlu" / "anatomy").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(_mc_rows(rng, "anatomy", n_questions)), out / "mmlu" / "anatomy" / f"{split}-00000-of-00001.parquet")
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m obliviate.data.text.synthetic_bench {muse|wmdp} DIR [SEED]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in ("muse", "wmdp"):
        print("usage: python -m obliviate.data.text.synthetic_bench {muse|wmdp} DIR [SEED]", file=sys.stderr)
        raise SystemExit(2)
    seed = int(argv[2]) if len(argv) > 2 else 0
    out = write_synthetic_muse(argv[1], seed=seed) if argv[0] == "muse" else write_synthetic_wmdp(argv[1], seed=seed)
    print(out)


if __name__ == "__main__":
    main()
