"""Write the token_cls dataset shipped with factory, deterministically.

    python -m factory.data.datasets.generate_token_cls            # rewrites factory/data/datasets/token_cls/
    python -m factory.data.datasets.generate_token_cls --out DIR  # somewhere else (the tests compare the two)

token_cls/{train,validation}.conll: templated sentences about people (PER), places (LOC) and organisations
(ORG), one- and two-word entities, in CoNLL format (word, tag; BIO tags; a blank line between sentences;
a `-DOCSTART-` line first, as CoNLL-2003 has). Every entity list is split so that a fifth of its names
appear only in validation: the model must tag them from their context ("works in", "met"), not recall
them. Made with a seeded `random.Random` from the lists below: no download, no third-party text.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from factory.data.datasets.generate import command_line

HERE = Path(__file__).parent  # where the shipped files live (the package folder)

logger = logging.getLogger(__name__)

SEED = 4321
SIZES = (700, 150)  # sentences: (train, validation)

ENTITIES = {
    "PER": [
        "Ines",
        "Maria Silva",
        "John",
        "Ana Costa",
        "Pedro",
        "Sofia Lopes",
        "Liam",
        "Emma Brown",
        "Noah",
        "Olivia",
        "Lucas Martin",
        "Chen Wei",
        "Yuki",
        "Amara Okafor",
        "Omar",
        "Lena Fischer",
        "Ravi Patel",
        "Clara",
        "Mateo",
        "Hana Kim",
        "Tomas",
        "Nadia Haddad",
        "Igor",
        "Elena Rossi",
        "Samuel",
    ],
    "LOC": [
        "Lisbon",
        "Paris",
        "New York",
        "Berlin",
        "Tokyo",
        "Porto",
        "Madrid",
        "Cape Town",
        "Rome",
        "Oslo",
        "Buenos Aires",
        "Cairo",
        "Lima",
        "Hong Kong",
        "Vienna",
        "Dublin",
        "San Diego",
        "Seoul",
        "Prague",
        "Nairobi",
        "Quito",
        "Kyoto",
        "Lagos",
        "Tel Aviv",
        "Athens",
    ],
    "ORG": [
        "Acme",
        "Google",
        "Red Cross",
        "Siemens",
        "Globex",
        "United Nations",
        "Initech",
        "Nokia",
        "Umbrella",
        "World Bank",
        "Oxfam",
        "Stark Industries",
        "Microsoft",
        "Hooli",
        "Daily Planet",
        "Interpol",
        "Vandelay Industries",
        "Airbus",
        "Wayne Enterprises",
        "Unicef",
        "Tesla",
        "Pied Piper",
        "Spotify",
        "Cyberdyne",
        "Amnesty International",
    ],
}
TEMPLATES = [
    "{PER} works in {LOC} .",
    "{PER} works for {ORG} in {LOC} .",
    "{PER} moved to {LOC} last year .",
    "{PER} met {PER} at the {ORG} office .",
    "{ORG} opened a new office in {LOC} .",
    "Yesterday {PER} flew from {LOC} to {LOC} .",
    "The {ORG} team hired {PER} .",
    "{PER} said that {ORG} will grow .",
    "According to {PER} , the weather in {LOC} is mild .",
    "{ORG} and {ORG} signed a deal in {LOC} .",
    "She visited {LOC} with {PER} .",
    "{PER} left {ORG} to join {ORG} .",
    "Many people in {LOC} use {ORG} products .",
    "The report from {ORG} mentions {LOC} and {LOC} .",
    "{PER} was born in {LOC} and studied there .",
    "We talked to {PER} about the new plan .",
    "The meeting in {LOC} ended early .",
    "Nobody expected the news today .",
    "{PER} , a manager at {ORG} , lives near {LOC} .",
    "Prices rose in {LOC} after {ORG} left .",
]


def split_names(rng: random.Random) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per type, the names training sees and the held-out ones only validation uses (a fifth)."""
    train, held_out = {}, {}
    for kind, names in ENTITIES.items():
        names = sorted(names)
        rng.shuffle(names)
        cut = len(names) // 5
        held_out[kind], train[kind] = names[:cut], names[cut:]
    return train, held_out


def sentence(rng: random.Random, names: dict[str, list[str]]) -> list[tuple[str, str]]:
    """One templated sentence as (word, tag) pairs."""
    pairs = []
    for slot in rng.choice(TEMPLATES).split():
        kind = slot[1:-1] if slot.startswith("{") else None
        if kind is None:
            pairs.append((slot, "O"))
            continue
        for i, word in enumerate(rng.choice(names[kind]).split()):
            pairs.append((word, f"{'B' if i == 0 else 'I'}-{kind}"))
    return pairs


def conll(sentences: list[list[tuple[str, str]]]) -> str:
    blocks = ["-DOCSTART- O"] + ["\n".join(f"{w} {t}" for w, t in s) for s in sentences]
    return "\n\n".join(blocks) + "\n"


def generate(out: Path) -> None:
    rng = random.Random(SEED)
    train_names, held_out = split_names(rng)
    both = {kind: train_names[kind] + held_out[kind] for kind in ENTITIES}
    train = [sentence(rng, train_names) for _ in range(SIZES[0])]
    validation = [sentence(rng, both) for _ in range(SIZES[1])]
    folder = out / "token_cls"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.conll").write_text(conll(train), encoding="utf-8")
    (folder / "validation.conll").write_text(conll(validation), encoding="utf-8")
    logger.info("wrote %s", folder)


def main(argv: list[str] | None = None) -> None:
    command_line(generate, __doc__, argv)


if __name__ == "__main__":
    main()
