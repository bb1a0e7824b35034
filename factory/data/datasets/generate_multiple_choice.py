"""Write the shipped multiple-choice dataset, deterministically.

    python -m factory.data.datasets.generate_multiple_choice            # rewrites multiple_choice/
    python -m factory.data.datasets.generate_multiple_choice --out DIR  # somewhere else

multiple_choice/{train,validation}.jsonl: `{"context", "choices", "label"}`. A question asks for a thing
of one category ("Which of these is a colour?"); one choice belongs to it and the 2-4 others to other
categories, in random order, so examples have 3 to 5 choices. Templated from word lists with a seeded
`random.Random`: the committed files are exactly what this script writes.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from factory.data.datasets.generate import command_line

HERE = Path(__file__).parent  # where the shipped files live (the package folder)

logger = logging.getLogger(__name__)

SEED = 4321
SIZES = (1500, 300)  # (train, validation) examples

# Eight categories of six words and three short question templates: small enough that the default run
# (2-layer BERT from scratch, about 280 steps) learns which word goes with which category; with ten
# categories of up to ten words and six templates, twice the data and three times the run time gave
# the same accuracy.
CATEGORIES = {
    "animal": ["dog", "cat", "horse", "rabbit", "tiger", "mouse"],
    "colour": ["red", "blue", "green", "yellow", "purple", "orange"],
    "feeling": ["happy", "sad", "angry", "afraid", "calm", "proud"],
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango"],
    "musical instrument": ["piano", "violin", "guitar", "drum", "flute", "trumpet"],
    "piece of furniture": ["table", "chair", "sofa", "bed", "desk", "shelf"],
    "tool": ["hammer", "saw", "wrench", "drill", "shovel", "chisel"],
    "vehicle": ["car", "bus", "train", "bicycle", "truck", "boat"],
}
TEMPLATES = ["Which of these is a {c}?", "Pick the {c}.", "Name the {c}."]


def example(rng: random.Random) -> dict:
    category = rng.choice(sorted(CATEGORIES))
    others = [c for c in sorted(CATEGORIES) if c != category]
    distractors = [rng.choice(CATEGORIES[c]) for c in rng.sample(others, rng.randint(2, 4))]
    choices = [rng.choice(CATEGORIES[category]), *distractors]
    rng.shuffle(choices)
    answer = next(i for i, w in enumerate(choices) if w in CATEGORIES[category])
    return {"context": rng.choice(TEMPLATES).format(c=category), "choices": choices, "label": answer}


def generate(out: Path) -> list[Path]:
    """Write both splits under `out/multiple_choice/`; return their paths."""
    rng = random.Random(SEED)
    folder = out / "multiple_choice"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, size in zip(("train", "validation"), SIZES):
        path = folder / f"{split}.jsonl"
        lines = [json.dumps(example(rng)) for _ in range(size)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        logger.info("wrote %s (%d examples)", path, size)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    command_line(generate, __doc__, argv)


if __name__ == "__main__":
    main()
