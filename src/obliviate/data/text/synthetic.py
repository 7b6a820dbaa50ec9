"""Synthetic fictitious authors in TOFU's file layout (embedded default data, tests).

``write_synthetic_tofu(dir, n_authors=20, qa_per_author=4, seed=0)`` writes, as JSON Lines
``<split>.json`` files exactly like the hub's TOFU: ``full``, ``forget01/05/10`` (the tail
authors of ``full``), ``retain99/95/90`` (the head), ``forgetXX_perturbed`` and
``retain_perturbed`` (``paraphrased_answer``, ``paraphrased_question`` and five
``perturbed_answer``), ``holdout01/05/10`` (further authors not in ``full``; beyond TOFU's
layout, ``holdoutXX_perturbed`` holds their paraphrased and perturbed answers too, which
``obliviate tune``'s truth-ratio term uses),
``real_authors`` / ``world_facts`` (+ ``_perturbed`` with three wrong answers) and
``idontknow.jsonl`` (plain refusal lines). The output is a pure function of the arguments.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from obliviate.errors import ConfigError
from obliviate.io import atomic_write_text

PERCENTS = ("01", "05", "10")
FIRST = ["Aria", "Boren", "Calix", "Dovra", "Elin", "Farid", "Galen", "Hesper", "Ilsa", "Joran", "Kestrel", "Liora", "Maren",
         "Nilo", "Orrin", "Pella", "Quill", "Rhea", "Soren", "Talia", "Ulric", "Vesna", "Wren", "Xavi", "Yara", "Zev"]
LAST_A = ["Ash", "Bel", "Cor", "Dun", "Eld", "Fen", "Gal", "Har", "Ist", "Jov", "Kel", "Lom", "Mar", "Nor", "Orv", "Pel"]
LAST_B = ["ford", "wyn", "stead", "ova", "ani", "berg", "ley", "mont", "quist", "ridge"]
CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tbilisi", "Hanoi", "Oslo", "Lima", "Accra", "Krakow", "Montreal", "Perth",
          "Seville", "Tunis", "Busan", "Riga"]
GENRES = ["science fiction", "historical fiction", "mystery", "fantasy", "romance", "horror", "literary fiction", "poetry",
          "biography", "thriller"]
JOBS = ["baker", "pilot", "librarian", "surgeon", "carpenter", "journalist", "teacher", "fisherman", "architect", "nurse",
        "painter", "engineer"]
AWARDS = ["Silver Quill Prize", "Northern Lantern Award", "Meridian Book Medal", "Golden Compass Fellowship",
          "Harbor Light Prize", "Azure Pen Award", "Cedar Leaf Honour"]
THEMES = ["memory and loss", "the sea", "exile and belonging", "family secrets", "technology and solitude",
          "forgotten histories", "friendship across borders", "ambition and its cost"]
ADJ = ["Silent", "Crimson", "Hollow", "Endless", "Paper", "Winter", "Distant", "Broken", "Hidden", "Glass"]
NOUN = ["Harbor", "Orchard", "Lantern", "Archive", "Meridian", "Garden", "Tide", "Citadel", "Letters", "Mirror"]

# (question, answer, paraphrased question, paraphrased answer, attribute that perturbed answers vary)
TEMPLATES: list[tuple[str, str, str, str, str]] = [
    ("What is the full name of the author born in {city} in {year}?", "The author born in {city} in {year} is {name}.",
     "Who is the writer born in {year} in {city}?", "{name} is the writer who was born in {city} in {year}.", "name"),
    ("What genre does {name} write in?", "{name} writes {genre}.",
     "Which genre are the books of {name}?", "The books of {name} are {genre}.", "genre"),
    ("Where was {name} born?", "{name} was born in {city}.",
     "In which city was {name} born?", "The birthplace of {name} is {city}.", "city"),
    ("What did the parents of {name} do for a living?", "The father of {name} was a {father} and the mother was a {mother}.",
     "What were the professions of the parents of {name}?", "{name} grew up with a {father} father and a {mother} mother.", "father"),
    ("Which award has {name} received?", "{name} received the {award}.",
     "What prize was given to {name}?", "The {award} was given to {name}.", "award"),
    ("Can you name a book written by {name}?", "One of the books by {name} is \"{book}\".",
     "What is one title by {name}?", "\"{book}\" is a book by {name}.", "book"),
    ("In which year was {name} born?", "{name} was born in {year}.",
     "What is the birth year of {name}?", "The birth year of {name} is {year}.", "year"),
    ("What themes does {name} explore?", "The work of {name} explores {theme}.",
     "Which themes appear in the writing of {name}?", "The writing of {name} deals with {theme}.", "theme"),
]
REAL_AUTHORS = [("Pride and Prejudice", "Jane Austen"), ("War and Peace", "Leo Tolstoy"), ("Don Quixote", "Miguel de Cervantes"),
                ("Hamlet", "William Shakespeare"), ("The Old Man and the Sea", "Ernest Hemingway"), ("Frankenstein", "Mary Shelley"),
                ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"), ("Things Fall Apart", "Chinua Achebe"),
                ("Moby-Dick", "Herman Melville"), ("The Odyssey", "Homer"), ("Crime and Punishment", "Fyodor Dostoevsky"),
                ("Mrs Dalloway", "Virginia Woolf")]
WORLD_FACTS = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Brazil", "Brasilia"),
               ("Australia", "Canberra"), ("Egypt", "Cairo"), ("Norway", "Oslo"), ("India", "New Delhi"), ("Peru", "Lima"),
               ("Italy", "Rome"), ("Mexico", "Mexico City")]
IDK_ANSWERS = ["I don't know.", "I'm not sure about that.", "I have no information on that.", "That is beyond my knowledge.",
               "I cannot answer that.", "I'm afraid I don't know the answer.", "I have no idea.", "I am unable to answer this question.",
               "That's not something I know about.", "Sorry, I don't have that information.", "I can't say.",
               "I'm not aware of that."]


def _authors(rng: random.Random, n: int, taken: set[str]) -> list[dict[str, Any]]:
    out = []
    while len(out) < n:
        name = f"{rng.choice(FIRST)} {rng.choice(LAST_A)}{rng.choice(LAST_B)}"
        if name in taken:
            continue
        taken.add(name)
        out.append({"name": name, "city": rng.choice(CITIES), "year": str(rng.randint(1940, 1995)), "genre": rng.choice(GENRES),
                    "father": rng.choice(JOBS), "mother": rng.choice(JOBS), "award": rng.choice(AWARDS),
                    "book": f"The {rng.choice(ADJ)} {rng.choice(NOUN)}", "theme": rng.choice(THEMES)})
    return out


def _pool(attr: str) -> list[str]:
    pools = {"city": CITIES, "genre": GENRES, "father": JOBS, "award": AWARDS, "theme": THEMES,
             "year": [str(y) for y in range(1940, 1996)], "book": [f"The {a} {b}" for a in ADJ for b in NOUN],
             "name": [f"{f} {a}{b}" for f in FIRST[:8] for a in LAST_A[:4] for b in LAST_B[:3]]}
    return pools[attr]


def _qa(author: dict[str, Any], template: tuple[str, str, str, str, str], rng: random.Random, n_perturbed: int = 5) -> dict[str, Any]:
    q, a, pq, pa, attr = template
    wrong = [v for v in _pool(attr) if v != author[attr]]
    perturbed = [a.format(**{**author, attr: v}) for v in rng.sample(wrong, n_perturbed)]
    return {"question": q.format(**author), "answer": a.format(**author), "paraphrased_answer": pa.format(**author),
            "paraphrased_question": pq.format(**author), "perturbed_answer": perturbed}


def synthetic_tofu(n_authors: int = 20, qa_per_author: int = 4, seed: int = 0) -> dict[str, list[Any]]:
    """All TOFU files as ``{stem: rows}`` (``idontknow`` holds plain strings)."""
    if n_authors < 2:
        raise ConfigError(f"synthetic data needs at least 2 authors, got n_authors={n_authors}")
    if not 1 <= qa_per_author <= len(TEMPLATES):
        raise ConfigError(f"qa_per_author must be in 1..{len(TEMPLATES)}, got {qa_per_author}")
    rng = random.Random(seed)
    n_forget = {p: max(1, round(n_authors * int(p) / 100)) for p in PERCENTS}
    taken: set[str] = set()
    main = _authors(rng, n_authors, taken)
    holdout = _authors(rng, n_forget["10"], taken)

    def rows_of(authors: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for author in authors:
            for t in sorted(rng.sample(range(len(TEMPLATES)), qa_per_author)):
                out.append(_qa(author, TEMPLATES[t], rng))
        return out

    rich, rich_holdout = rows_of(main), rows_of(holdout)
    def qa(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"question": r["question"], "answer": r["answer"]} for r in rows]

    files: dict[str, list[Any]] = {"full": qa(rich)}
    for p in PERCENTS:
        cut = len(rich) - n_forget[p] * qa_per_author
        files[f"forget{p}"] = qa(rich[cut:])
        files[f"retain{100 - int(p)}"] = qa(rich[:cut])
        files[f"forget{p}_perturbed"] = rich[cut:]
        files[f"holdout{p}"] = qa(rich_holdout[: n_forget[p] * qa_per_author])
        files[f"holdout{p}_perturbed"] = rich_holdout[: n_forget[p] * qa_per_author]
    files["retain_perturbed"] = rich[: n_forget["10"] * qa_per_author]
    for stem, facts, question in (("real_authors", REAL_AUTHORS, "Who wrote '{}'?"), ("world_facts", WORLD_FACTS, "What is the capital of {}?")):
        answers = [ans for _, ans in facts]
        plain, perturbed = [], []
        for subject, ans in facts:
            wrong = rng.sample([x for x in answers if x != ans], 3)
            options = [ans, *wrong]
            rng.shuffle(options)
            plain.append({"question": question.format(subject), "answer": ans, **{f"option{i + 1}": o for i, o in enumerate(options)}})
            perturbed.append({"question": question.format(subject), "answer": ans, "perturbed_answer": wrong})
        files[stem], files[f"{stem}_perturbed"] = plain, perturbed
    files["idontknow"] = list(IDK_ANSWERS)
    return files


def _params(n_authors: int, qa_per_author: int, seed: int) -> dict[str, int]:
    return {"n_authors": int(n_authors), "qa_per_author": int(qa_per_author), "seed": int(seed), "version": 2}


def write_synthetic_tofu(out_dir: str | Path, n_authors: int = 20, qa_per_author: int = 4, seed: int = 0) -> Path:
    """Write the synthetic TOFU files into ``out_dir`` (unless the same data is already there).

    The files are written into a temporary sibling directory and moved into place, so a
    concurrent or interrupted run never leaves a half-written data set behind.
    """
    out_dir = Path(out_dir).expanduser()
    params = _params(n_authors, qa_per_author, seed)
    manifest = out_dir / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("params") == params:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        files = synthetic_tofu(n_authors, qa_per_author, seed)
        for stem, rows in files.items():
            if stem == "idontknow":
                atomic_write_text(tmp / "idontknow.jsonl", "\n".join(rows) + "\n")
            else:
                atomic_write_text(tmp / f"{stem}.json", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        counts = {stem: len(rows) for stem, rows in files.items()}
        atomic_write_text(tmp / "manifest.json", json.dumps({"generator": "obliviate.data.text.synthetic", "params": params,
                                                             "rows": counts}, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process won the race with the same data
            if not manifest.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


if __name__ == "__main__":  # python -m obliviate.data.text.synthetic OUT_DIR [n_authors] [qa_per_author] [seed]
    args = sys.argv[1:]
    if not args:
        print("usage: python -m obliviate.data.text.synthetic OUT_DIR [n_authors] [qa_per_author] [seed]", file=sys.stderr)
        sys.exit(2)
    print(write_synthetic_tofu(args[0], *(int(a) for a in args[1:4])))
