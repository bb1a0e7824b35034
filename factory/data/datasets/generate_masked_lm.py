"""Write the masked_lm dataset shipped with factory, deterministically.

    python -m factory.data.datasets.generate_masked_lm            # rewrites factory/data/datasets/masked_lm/
    python -m factory.data.datasets.generate_masked_lm --out DIR  # somewhere else (the tests compare the two)

masked_lm/{train,validation}.txt: one-sentence documents separated by blank lines. A sentence is about
one topic (a kitchen, a harbour, a farm, ...): a template whose slots (names, person, place, thing,
action, adjective) are filled from that topic's word lists. Every template is 14 words and punctuation
marks, so with [CLS] and [SEP] a document is 16 tokens for a tokenizer that keeps each word whole (as
one trained on these texts does), and the head's default 64-token blocks hold four whole documents: a
masked word can be told from its place in the sentence (the template's fixed words), from the words
around it (which topic) or not at all (a name, which is random), the structure a small BERT trained
from scratch picks up within the default run. Made with a seeded `random.Random` from the lists below:
no download, no third-party text.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from factory.data.datasets.generate import command_line

HERE = Path(__file__).parent  # where the shipped files live (the package folder)

logger = logging.getLogger(__name__)

SEED = 1357
SIZES = (4000, 400)  # documents: (train, validation)

# topic -> (people, places, things, actions done to things, adjectives of things)
TOPICS = {
    "kitchen": (
        "cook baker chef waiter",
        "kitchen bakery oven pantry",
        "soup bread cake pasta",
        "stirred baked tasted sliced",
        "hot sweet salty fresh",
    ),
    "harbour": (
        "sailor captain fisher diver",
        "harbour boat beach pier",
        "net anchor rope sail",
        "pulled tied mended lowered",
        "wet heavy long salty",
    ),
    "farm": (
        "farmer shepherd milkmaid ploughman",
        "farm barn field stable",
        "hay wheat milk eggs",
        "gathered carried stored fed",
        "golden fresh dusty warm",
    ),
    "space": (
        "astronaut pilot engineer scientist",
        "rocket station moon orbit",
        "helmet satellite antenna panel",
        "launched repaired tested docked",
        "bright silver distant tiny",
    ),
    "music": (
        "singer drummer pianist violinist",
        "stage studio concert theatre",
        "song drum piano violin",
        "played tuned practised recorded",
        "loud soft slow gentle",
    ),
    "school": (
        "teacher pupil student headmaster",
        "school classroom library playground",
        "book pencil lesson map",
        "read wrote studied drew",
        "new blue thick simple",
    ),
    "forest": (
        "hunter ranger woodcutter hiker",
        "forest woods cabin trail",
        "axe log mushroom acorn",
        "chopped found picked stacked",
        "green tall dark damp",
    ),
    "hospital": (
        "doctor nurse surgeon patient",
        "hospital ward clinic pharmacy",
        "bandage pill syringe chart",
        "checked cleaned prepared signed",
        "white small clean sterile",
    ),
}
NAMES = "Anna Ben Clara David Emma Felix Greta Hugo Ines Jonas Lena Marco Nora Oscar Paula Rosa".split()
# 14 words and punctuation marks each (tests/test_masked_lm.py checks it with a trained tokenizer).
TEMPLATES = [
    "{name} the {person} {action} the {adjective} {thing} in the {place} with {friend} today.",
    "In the {place}, {name} {action} a {adjective} {thing} for the {person} today.",
    "The {person} {name} saw the {adjective} {thing} near the {place} with {friend} today.",
]


def document(rng: random.Random) -> str:
    people, places, things, actions, adjectives = (
        words.split() for words in TOPICS[rng.choice(sorted(TOPICS))]
    )
    name = rng.choice(NAMES)
    return rng.choice(TEMPLATES).format(
        name=name,
        friend=rng.choice([n for n in NAMES if n != name]),
        person=rng.choice(people),
        place=rng.choice(places),
        thing=rng.choice(things),
        action=rng.choice(actions),
        adjective=rng.choice(adjectives),
    )


def generate(out: Path) -> list[Path]:
    """Write both splits under `out/masked_lm/`; return their paths."""
    rng = random.Random(SEED)
    folder = out / "masked_lm"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, size in zip(("train", "validation"), SIZES):
        path = folder / f"{split}.txt"
        path.write_text("\n\n".join(document(rng) for _ in range(size)) + "\n", encoding="utf-8")
        logger.info("wrote %s (%d documents)", path, size)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    command_line(generate, __doc__, argv)


if __name__ == "__main__":
    main()
