"""Write the small datasets shipped with factory, one per head, deterministically.

    python -m factory.data.datasets.generate            # rewrites factory/datasets/{seqcls,qa,causal_lm}/
    python -m factory.data.datasets.generate --out DIR  # somewhere else (the tests compare the two)

Everything is templated from word lists with a seeded `random.Random`, so the committed files are exactly
what this script writes; no download, no third-party text.

- seqcls/{train,validation}.csv (text,label): short movie reviews whose sentiment comes from cue words
  ("brilliant", "dull"), sometimes negated ("not bad" is positive), among neutral filler sentences.
  Labels "negative"/"positive", balanced. A tiny random transformer learns it to well above chance in
  about a minute on CPU; negation keeps it from being trivially one word.
- qa/{train,validation}.json: SQuAD format. Each paragraph states facts about a few people (birth city,
  year, job, employer city); questions ask for one fact of one person, so the answer is a span of the
  context and the model must find the right person.
- causal_lm/{train,validation}.txt: templated short stories, separated by blank lines.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import random
import string
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
SEED = 1234
SIZES = {"seqcls": (2000, 400), "qa": (150, 30), "causal_lm": (220, 30)}  # (train, validation) units

# -- seqcls -----------------------------------------------------------------------------------------

SUBJECTS = [
    "the movie",
    "this film",
    "the story",
    "the acting",
    "the plot",
    "the soundtrack",
    "the ending",
    "the script",
    "the cast",
    "the director's work",
    "the dialogue",
    "the pacing",
]
POSITIVE = [
    "great",
    "wonderful",
    "brilliant",
    "superb",
    "excellent",
    "moving",
    "delightful",
    "charming",
    "fantastic",
    "gripping",
]
NEGATIVE = ["awful", "boring", "terrible", "dull", "weak", "dreadful", "bland", "clumsy", "tedious", "poor"]
POSITIVE_VERBS = ["loved", "enjoyed", "adored", "admired"]
NEGATIVE_VERBS = ["hated", "disliked", "regretted", "resented"]
FILLER = [
    "I watched it on a rainy sunday.",
    "My friends came along with me.",
    "It runs for about two hours.",
    "The theater was half empty.",
    "I saw it last week.",
    "It is based on a novel.",
    "We bought popcorn before it started.",
    "The trailer came out last year.",
    "It was filmed in the mountains.",
    "My sister recommended it.",
]
CLOSINGS_POS = ["I would watch it again.", "Highly recommended.", "A must see."]
CLOSINGS_NEG = ["I would not watch it again.", "Skip this one.", "What a waste of time."]


def _cue(rng: random.Random, positive: bool) -> str:
    """One sentence carrying the sentiment; a fifth of them reach it through negation."""
    subject = rng.choice(SUBJECTS)
    if rng.random() < 0.2:  # negation: "not <opposite word>"
        word = rng.choice(NEGATIVE if positive else POSITIVE)
        return f"{subject.capitalize()} was not {word} at all."
    if rng.random() < 0.3:
        verb = rng.choice(POSITIVE_VERBS if positive else NEGATIVE_VERBS)
        return f"I {verb} {subject}."
    word = rng.choice(POSITIVE if positive else NEGATIVE)
    adverb = rng.choice(["", "really ", "truly ", "quite ", "very "])
    return f"{subject.capitalize()} was {adverb}{word}."


def review(rng: random.Random, positive: bool) -> str:
    sentences = [_cue(rng, positive) for _ in range(rng.choice([1, 1, 2]))]
    sentences += rng.sample(FILLER, rng.choice([0, 1, 1, 2]))
    rng.shuffle(sentences)
    if rng.random() < 0.25:
        sentences.append(rng.choice(CLOSINGS_POS if positive else CLOSINGS_NEG))
    return " ".join(sentences)


def seqcls_rows(rng: random.Random, count: int) -> list[tuple[str, str]]:
    labels = ["positive", "negative"] * (count // 2) + ["positive"] * (count % 2)
    rng.shuffle(labels)
    return [(review(rng, label == "positive"), label) for label in labels]


def seqcls_csv(rows: list[tuple[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    return out.getvalue()


# -- qa ---------------------------------------------------------------------------------------------

FIRST_NAMES = [
    "Anna", "Ben", "Clara", "David", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kara", "Liam",
    "Maya", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera", "Walter", "Yuki",
    "Zoe", "Arjun", "Bianca", "Carlos", "Dana", "Emil",
]  # fmt: skip
FEMALE = {
    "Anna", "Clara", "Elena", "Greta", "Ines", "Kara", "Maya", "Olga", "Quinn", "Rosa", "Tara", "Vera",
    "Yuki", "Zoe", "Bianca", "Dana",
}  # fmt: skip
LAST_NAMES = [
    "Smith", "Novak", "Garcia", "Keller", "Rossi", "Tanaka", "Dubois", "Larsen", "Silva", "Moreau",
    "Weber", "Costa", "Ito", "Nowak", "Berg", "Fischer", "Lopez", "Meyer", "Okafor", "Petrov",
]  # fmt: skip
CITIES = [
    "Paris", "Lisbon", "Oslo", "Vienna", "Madrid", "Prague", "Dublin", "Athens", "Warsaw", "Helsinki",
    "Berlin", "Rome", "Tokyo", "Cairo", "Lima", "Toronto", "Nairobi", "Seoul", "Quito", "Sydney",
]  # fmt: skip
JOBS = [
    "doctor", "teacher", "baker", "pilot", "lawyer", "painter", "engineer", "farmer", "chemist",
    "journalist", "carpenter", "nurse", "architect", "librarian", "musician",
]  # fmt: skip
HOBBIES = ["chess", "sailing", "painting", "running", "gardening", "cooking", "climbing", "photography"]


SENTENCES = {
    # fact key -> the sentence stating it; "year" and "city" ride along in "born" and "job".
    "born": "{name} was born in {born} in {year}.",
    "job": "{pronoun} works as {article} {job} in {city}.",
    "hobby": "In {possessive} free time, {first} enjoys {hobby}.",
}
QUESTIONS = {
    "born": ["Where was {name} born?", "In which city was {name} born?"],
    "year": ["When was {name} born?", "In what year was {name} born?"],
    "job": ["What does {name} work as?", "What is the job of {name}?"],
    "city": ["Where does {name} work?", "In which city does {name} work?"],
    "hobby": ["What does {first} enjoy in free time?", "What is the hobby of {first}?"],
}


def _fill(template: str, values: dict[str, str]) -> tuple[str, dict[str, int]]:
    """`template.format(**values)` and the character offset where each field landed."""
    text, offsets = "", {}
    for literal, field, _, _ in string.Formatter().parse(template):
        text += literal
        if field is not None:
            offsets[field] = len(text)
            text += values[field]
    return text, offsets


def _person(rng: random.Random, first: str) -> dict[str, str]:
    pronoun = "She" if first in FEMALE else "He"
    job = rng.choice(JOBS)
    return {
        "first": first,
        "name": f"{first} {rng.choice(LAST_NAMES)}",
        "pronoun": pronoun,
        "possessive": "his" if pronoun == "He" else "her",
        "article": "an" if job[0] in "aeiou" else "a",
        "born": rng.choice(CITIES),
        "year": str(rng.randint(1940, 2005)),
        "job": job,
        "city": rng.choice(CITIES),
        "hobby": rng.choice(HOBBIES),
    }


def qa_paragraph(rng: random.Random, index: int, split: str) -> dict:
    people = [_person(rng, first) for first in rng.sample(FIRST_NAMES, rng.choice([2, 3, 3, 4]))]
    # Each person's "born" sentence comes first (it names them; the "job" sentence says he/she), then the
    # other two in either order, so the position of a fact in the paragraph varies.
    order = []
    for p in range(len(people)):
        order += [(p, "born"), *[(p, key) for key in rng.sample(["job", "hobby"], 2)]]
    context, answer_at = "", {}
    for p, key in order:
        if context:
            context += " "
        text, offsets = _fill(SENTENCES[key], people[p])
        for field, offset in offsets.items():
            answer_at[(p, field)] = len(context) + offset
        context += text
    qas = []
    for p, person in enumerate(people):
        for key in rng.sample(sorted(QUESTIONS), 2):
            answer, start = person[key], answer_at[(p, key)]
            assert context[start : start + len(answer)] == answer, (context, answer, start)
            qas.append(
                {
                    "id": f"{split}-{index}-{p}-{key}",
                    "question": rng.choice(QUESTIONS[key]).format(**person),
                    "answers": [{"text": answer, "answer_start": start}],
                }
            )
    return {"context": context, "qas": qas}


def qa_json(rng: random.Random, count: int, split: str) -> str:
    """SQuAD JSON with one paragraph per line: compact, yet a diff shows which paragraph changed."""
    paragraphs = ",\n".join(json.dumps(qa_paragraph(rng, i, split), ensure_ascii=False) for i in range(count))
    head = json.dumps({"version": "factory-qa-1", "data": [{"title": f"people-{split}", "paragraphs": []}]})
    return head.replace('"paragraphs": []', '"paragraphs": [\n' + paragraphs + "\n]") + "\n"


# -- causal_lm --------------------------------------------------------------------------------------

ANIMALS = ["fox", "rabbit", "bear", "owl", "cat", "dog", "mouse", "turtle", "duck", "goat"]
ADJECTIVES = ["little", "brave", "curious", "sleepy", "clever", "kind", "shy", "happy"]
PLACES = ["a quiet forest", "a small village", "a big city", "a green valley", "an old farm", "a sunny beach"]
LIKES = [
    "play in the grass",
    "read old books",
    "sing songs",
    "bake bread",
    "watch the stars",
    "swim in the lake",
]
PROBLEMS = [
    "a storm knocked down the old bridge",
    "the river rose and flooded the path",
    "a friend lost a red ball in the woods",
    "the winter came early and the food ran low",
    "a strange noise came from the hill",
]
ACTIONS = [
    "asked everyone to help",
    "walked all night to find an answer",
    "built a raft from sticks",
    "shared what little food there was",
    "climbed the hill to look around",
]
ENDINGS = [
    "From that day on, everyone remembered how {name} had helped.",
    "In the end, {name} was tired but very happy.",
    "And so {name} learned that friends make every problem smaller.",
    "That night, {name} slept better than ever before.",
]


def story(rng: random.Random) -> str:
    name = rng.choice(FIRST_NAMES)
    animal, adjective = rng.choice(ANIMALS), rng.choice(ADJECTIVES)
    pronoun = "she" if name in FEMALE else "he"
    friend = rng.choice([n for n in FIRST_NAMES if n != name])
    lines = [
        f"Once upon a time, there was a {adjective} {animal} named {name}.",
        f"{name} lived in {rng.choice(PLACES)} and loved to {rng.choice(LIKES)}.",
        f"One day, {rng.choice(PROBLEMS)}.",
        f"{name} did not give up. With {friend}, {pronoun} {rng.choice(ACTIONS)}.",
    ]
    if rng.random() < 0.5:
        lines.append(f'{friend} said, "We can do it together." And they did.')
    lines.append(rng.choice(ENDINGS).format(name=name))
    return " ".join(lines)


def stories_txt(rng: random.Random, count: int) -> str:
    return "\n\n".join(story(rng) for _ in range(count)) + "\n"


# -- writing ----------------------------------------------------------------------------------------


def generate(out: Path = HERE) -> list[Path]:
    """Write every shipped dataset under `out`; returns the paths written."""
    files: dict[str, str] = {}
    for split, position in (("train", 0), ("validation", 1)):
        # One generator per (head, split), so changing one file's size leaves the others as they are.
        rng = random.Random(f"{SEED}-seqcls-{split}")
        files[f"seqcls/{split}.csv"] = seqcls_csv(seqcls_rows(rng, SIZES["seqcls"][position]))
        rng = random.Random(f"{SEED}-qa-{split}")
        files[f"qa/{split}.json"] = qa_json(rng, SIZES["qa"][position], split)
        rng = random.Random(f"{SEED}-causal_lm-{split}")
        files[f"causal_lm/{split}.txt"] = stories_txt(rng, SIZES["causal_lm"][position])
    written = []
    for relative, content in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8", newline="")
        written.append(path)
        logger.info("Wrote %s (%d bytes)", path, len(content.encode()))
    return written


def command_line(generate: Callable[[Path], object], doc: str, argv: list[str] | None = None) -> None:
    """The command line every dataset generator shares: `--out <folder>` (default: the package)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: the package)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(args.out)


def main(argv: list[str] | None = None) -> None:
    command_line(generate, __doc__, argv)


if __name__ == "__main__":
    main()
