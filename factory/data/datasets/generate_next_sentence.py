"""Write the shipped next-sentence dataset (documents of sentences), deterministically.

    python -m factory.data.datasets.generate_next_sentence            # rewrites next_sentence/
    python -m factory.data.datasets.generate_next_sentence --out DIR  # somewhere else

next_sentence/{train,validation}.txt: documents separated by blank lines, one sentence per line, the
layout BERT's pretraining data has. A document keeps to one thing of one category (the words of
`generate_multiple_choice.CATEGORIES`): each of its 3-5 templated sentences names it beside another
thing of its category and opens with where it stands in the story ("First,", "Then,", ..., "Finally,").
Whether a sentence continues another is learnable from the words they share, as BERT's next-sentence
task largely is, and from their openings, which a small model fresh from init picks up much sooner. The next_sentence and pretraining heads draw their sentence pairs from these documents.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from factory.data.datasets.generate import command_line
from factory.data.datasets.generate_multiple_choice import CATEGORIES

logger = logging.getLogger(__name__)

SEED = 2468
SIZES = (1000, 150)  # (train, validation) documents
TEMPLATES = [
    "the {a} is next to the {b}.",
    "I saw a {a} and a {b}.",
    "a {a} is not a {b}.",
    "she likes the {a} more than the {b}.",
    "we bought a {a}.",
    "there is a {a} in the story.",
    "he drew a {a} on the wall.",
]
# Each sentence opens with where it stands in its document, as a told story does: a sentence opening
# with "first" never follows another, and one opening with "then" follows the first, the previous "then"
# or "next"...
OPENINGS = ("First,", "Then,", "Next,", "After that,")
LAST = "Finally,"


def document(rng: random.Random) -> list[str]:
    # Every sentence names the document's subject, a thing of its category, beside another of them.
    words = CATEGORIES[rng.choice(sorted(CATEGORIES))]
    subject = rng.choice(words)
    others = [w for w in words if w != subject]
    n = rng.randint(3, 5)
    sentences = []
    for i in range(n):
        pair = [subject, rng.choice(others)]
        rng.shuffle(pair)
        opening = LAST if i == n - 1 else OPENINGS[i]
        sentences.append(f"{opening} {rng.choice(TEMPLATES).format(a=pair[0], b=pair[1])}")
    return sentences


def generate(out: Path) -> list[Path]:
    """Write both splits under `out/next_sentence/`; return their paths."""
    rng = random.Random(SEED)
    folder = out / "next_sentence"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, size in zip(("train", "validation"), SIZES):
        path = folder / f"{split}.txt"
        path.write_text("\n\n".join("\n".join(document(rng)) for _ in range(size)) + "\n", encoding="utf-8")
        logger.info("wrote %s (%d documents)", path, size)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    command_line(generate, __doc__, argv)


if __name__ == "__main__":
    main()
