"""Write the seq2seq_lm dataset shipped with factory, deterministically.

    python -m factory.data.datasets.generate_seq2seq_lm            # rewrites factory/data/datasets/seq2seq_lm/
    python -m factory.data.datasets.generate_seq2seq_lm --out DIR  # somewhere else (the tests compare the two)

seq2seq_lm/{train,validation}.jsonl ({"source", "target"}): a templated news-like sentence, with a time
phrase, adjectives, an adverb, a place and a filler sentence around its subject, verb and object; the
"summary" is the bare `subject verb object` ("the farmer repaired the tractor"). The model must find
those three words wherever the template puts them, so copying the first words of the source scores
low. Made with a seeded `random.Random` from the lists below: no download, no third-party text.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from factory.data.datasets.generate import command_line

HERE = Path(__file__).parent  # where the shipped files live (the package folder)

logger = logging.getLogger(__name__)

SEED = 2468
SIZES = (3000, 300)  # pairs: (train, validation)

SUBJECTS = (
    "farmer teacher doctor pilot baker singer painter driver nurse chef student judge sailor miner".split()
)
VERBS = "repaired painted sold bought cleaned found moved opened carried washed built checked".split()
OBJECTS = "tractor fence boat house window piano bicycle wagon garden bridge clock table ladder door".split()
ADJECTIVES = "old young tall tired busy quiet cheerful careful famous local new red small large".split()
ADVERBS = "quietly quickly slowly carefully happily finally proudly".split()
TIMES = ["Yesterday,", "On Monday,", "Last week,", "This morning,", "Early today,", "In the evening,"]
PLACES = ["near the river", "in the village", "behind the school", "at the market", "by the old mill"]
FILLERS = [
    "It was a sunny day.",
    "Nobody expected it.",
    "The neighbours watched.",
    "It took several hours.",
    "Everyone was surprised.",
    "",
]


def pair(rng: random.Random) -> dict[str, str]:
    subject, verb, obj = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
    subject_phrase = f"the {rng.choice(ADJECTIVES)} {subject}"
    object_phrase = f"the {rng.choice(ADJECTIVES)} {obj}"
    adverb = rng.choice(ADVERBS)
    if rng.random() < 0.5:  # active voice, time first or last
        clause = f"{subject_phrase} {adverb} {verb} {object_phrase} {rng.choice(PLACES)}"
    else:  # passive voice: the object comes first
        clause = f"{object_phrase} was {adverb} {verb} by {subject_phrase} {rng.choice(PLACES)}"
    time = rng.choice(TIMES)
    sentence = (
        f"{time} {clause}." if rng.random() < 0.6 else f"{clause[0].upper()}{clause[1:]} {time[:-1].lower()}."
    )
    source = " ".join(s for s in (sentence, rng.choice(FILLERS)) if s)
    return {"source": source, "target": f"the {subject} {verb} the {obj}"}


def generate(out: Path) -> None:
    rng = random.Random(SEED)
    folder = out / "seq2seq_lm"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("train", "validation"), SIZES):
        lines = [json.dumps(pair(rng)) for _ in range(n)]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        logger.info("wrote %d pairs to %s", n, folder / f"{name}.jsonl")


def main(argv: list[str] | None = None) -> None:
    command_line(generate, __doc__, argv)


if __name__ == "__main__":
    main()
