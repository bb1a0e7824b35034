"""Predict with a trained model: `python infer.py model=<run dir or model dir> text="a great movie"`.

    python infer.py model=<dir> text="a great movie"                      # seqcls: label and probability
    python infer.py model=<dir> question="..." context="..."              # qa: answer, score, char span
    python infer.py model=<dir> prompt="Once upon" max_new_tokens=40 temperature=0.8 top_p=0.9
    python infer.py model=<dir> input=in.jsonl output=out.jsonl           # one record per line
    python infer.py --help                                                # every key and its default

Arguments use Hydra's `key=value` override syntax, but this is not a Hydra app: composing a config would
cost more than the prediction itself on a cold start, and the model folder's config.json already fixes
the architecture. The keys and defaults are `factory.inference.predictor.INFER_OPTIONS` (documented in
conf/infer.yaml). Prints one JSON line per input; on an error prints the message and exits with 1.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from factory.inference.predictor import usage

        print(usage())
        return 0
    from factory.contract.errors import USER_ERRORS
    from factory.inference.predictor import parse_args, run

    try:
        run(parse_args(argv), sys.stdout)
    except (*USER_ERRORS, ValueError) as e:  # ValueError: a bad value torch or a tokenizer refuses
        print(f"infer.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
