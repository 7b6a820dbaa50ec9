"""A small MUSE-News-format subset of generated news articles (bench/muse_smollm2.py's data).

Everything is invented: the articles are filled-in templates about fictitious people,
towns and organisations (written for this benchmark, free of copyright, no real events), so
a model can only know their specifics (names, numbers, places) from fine-tuning on them.
The folder has MUSE-News' hub layout (``<subset>/<split>-00000-of-00001.parquet``):

- ``raw``: ``forget``, ``retain1``, ``retain2``, ``holdout`` articles;
- ``verbmem/forget``: the first half of each forget article (``prompt``) and the rest (``gt``);
- ``knowmem``: two questions per article, ``forget_qa`` / ``retain_qa`` (+ 3 in-context
  examples each, ``*_qa_icl``, from articles outside those sets);
- ``privleak``: ``forget`` (= raw forget), ``retain`` (= raw retain1), ``holdout``.

``python bench/muse_news_subset.py DIR [--forget 16 --retain 16 --holdout 16 --seed 0]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FIRST = ["Maren", "Tobias", "Ilona", "Caspian", "Wilhelmina", "Oren", "Sabine", "Dorian", "Annika", "Leopold", "Petra", "Rufus",
         "Ingrid", "Matthias", "Rosalind", "Cyprian", "Elodie", "Bastian", "Theodora", "Jasper", "Livia", "Konrad", "Helka", "Ambrose"]
LAST = ["Vellacott", "Drummond-Hale", "Quenby", "Oakenshaw", "Pellegrew", "Marchbank", "Tullivar", "Fennimore", "Harrowgate",
        "Lindqvist", "Brannock", "Castellane", "Whitlock", "Ravensworth", "Ostergaard", "Penhallow"]
TOWNS = ["Merrowby", "Caldergate", "Wrenfield", "Lower Ashcombe", "Port Halloran", "Kestwick", "Dunmere", "Selbrook", "Tarrowmouth",
         "Glenhallow", "Orrisby", "Fennick Bay", "Hollinsgate", "Braymoor"]
ORGS = ["the Merrow Valley Trust", "Caldergate Rovers", "the Northern Estuary Institute", "the Wrenfield Choral Society",
        "Halloran Ferries", "the Kestwick Observatory", "the Selbrook Allotment Union", "the Dunmere Lifeboat Station"]
TEMPLATES = [
    ("{town} council approved a plan on {day} to turn the disused {place} into {thing}. Councillor {name} said the project would cost "
     "{money} pounds and open in {year}. {n} residents signed a petition in support. Critics argued the money should go to road repairs. "
     "{last} replied that {town} had waited long enough.",
     [("What will the disused {place} in {town} become?", "{thing}"), ("How much will the {town} project cost?", "{money} pounds")]),
    ("{org} announced on {day} that {name} will lead it from {year}. {first} previously spent {n} years at a shipyard in {town}. "
     "The appointment follows a difficult season in which membership fell sharply. {last} said the first priority would be {thing}. "
     "The decision was welcomed by volunteers.",
     [("Who will lead {org} from {year}?", "{name}"), ("How many years did {name} spend at a shipyard in {town}?", "{n}")]),
    ("Scientists at {org} reported on {day} that a colony of {animal} had returned to {town} after {n} years. Researcher {name} "
     "counted the birds from a boat near the {place}. The team credits {thing} for the recovery. Fishermen in {town} said they had "
     "noticed the change. A full survey is planned for {year}.",
     [("Which animals returned to {town}?", "{animal}"), ("After how many years did the {animal} return to {town}?", "{n}")]),
    ("A storm on {day} cut power to {n} homes in {town}. The {place} was closed after a wall collapsed. Engineer {name} said repairs "
     "would take until {year}. Volunteers from {org} handed out blankets overnight. {last} urged residents to avoid the coast road "
     "until the tide went out.",
     [("How many homes in {town} lost power in the storm?", "{n}"), ("Which organisation handed out blankets in {town}?", "{org}")]),
    ("{name} won the {town} open chess tournament on {day}, beating {n} other players. {first} took up the game at the {place} in "
     "{year}. The final lasted almost six hours. {last} said the prize of {money} pounds would go to {org}. Organisers hope to double "
     "the field next year.",
     [("Who won the {town} open chess tournament?", "{name}"), ("Where will {name}'s prize money go?", "{org}")]),
]
PLACES = ["railway goods shed", "wool market", "pier pavilion", "old tannery", "lighthouse keeper's cottage", "grain warehouse",
          "corn exchange", "boat house"]
THINGS = ["a community cinema", "a seaweed farm", "a repair cafe", "a rooftop observatory", "a children's library",
          "a cold-water swimming club", "a tool lending shed", "a music school"]
ANIMALS = ["puffins", "grey herons", "kittiwakes", "avocets", "little terns", "oystercatchers"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


def article(rng: np.random.Generator, k: int) -> tuple[str, list[tuple[str, str]]]:
    first, last = FIRST[rng.integers(len(FIRST))], LAST[rng.integers(len(LAST))]
    slots = {"first": first, "last": last, "name": f"{first} {last}", "town": TOWNS[rng.integers(len(TOWNS))],
             "org": ORGS[rng.integers(len(ORGS))], "place": PLACES[rng.integers(len(PLACES))], "thing": THINGS[rng.integers(len(THINGS))],
             "animal": ANIMALS[rng.integers(len(ANIMALS))], "day": DAYS[rng.integers(len(DAYS))],
             "year": str(int(rng.integers(2025, 2031))), "n": str(int(rng.integers(12, 900))), "money": f"{int(rng.integers(2, 90)) * 10000:,}"}
    text, qa = TEMPLATES[k % len(TEMPLATES)]
    return text.format(**slots), [(q.format(**slots), a.format(**slots)) for q, a in qa]


def write(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([r if isinstance(r, dict) else {"text": r} for r in rows]), path.parent / f"{path.name}-00000-of-00001.parquet")


def write_subset(out: str | Path, n_forget: int = 16, n_retain: int = 16, n_holdout: int = 16, seed: int = 0) -> Path:
    out = Path(out)
    rng = np.random.default_rng(seed)
    counter = iter(range(10**6))
    sets = {name: [article(rng, next(counter)) for _ in range(n)] for name, n in
            (("forget", n_forget), ("retain1", n_retain), ("retain2", n_retain // 2), ("holdout", n_holdout), ("icl", 6))}
    for split in ("forget", "retain1", "retain2", "holdout"):
        write(out / "raw" / split, [t for t, _ in sets[split]])
    verb = []
    for text, _ in sets["forget"]:
        words = text.split(" ")
        verb.append({"prompt": " ".join(words[: len(words) // 2]), "gt": " ".join(words[len(words) // 2:])})
    write(out / "verbmem" / "forget", verb)
    for side, name in (("forget", "forget"), ("retain", "retain1")):
        write(out / "knowmem" / f"{side}_qa", [{"question": q, "answer": a} for _, qa in sets[name] for q, a in qa])
    icl = [{"question": q, "answer": a} for _, qa in sets["icl"] for q, a in qa[:1]]
    write(out / "knowmem" / "forget_qa_icl", icl[:3])
    write(out / "knowmem" / "retain_qa_icl", icl[3:6])
    write(out / "privleak" / "forget", [t for t, _ in sets["forget"]])
    write(out / "privleak" / "retain", [t for t, _ in sets["retain1"]])
    write(out / "privleak" / "holdout", [t for t, _ in sets["holdout"]])
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--forget", type=int, default=16)
    p.add_argument("--retain", type=int, default=16)
    p.add_argument("--holdout", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_subset(a.out, a.forget, a.retain, a.holdout, a.seed))
