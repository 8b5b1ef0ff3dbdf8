"""Writes the tiny SQuAD files of tests/tasks/test_qa.py into this directory (deterministic).

Each context lists capitals, "The capital of <country> is <city>.", long enough that a
48-token window cannot hold it (so the doc stride matters and later facts only appear in a
later window). Questions ask "What is the capital of <country>?"; city names are two word
pieces ("Bar" + "##ton"), one country is accented ("Estéria") to exercise lower-casing and
accent stripping. In v2.0 some questions ask about a country the context does not mention
(is_impossible, no answers).
"""

import json
import os
import random

COUNTRIES = ["Norland", "Estéria", "Valdor", "Kestria", "Morvia", "Tallis", "Orenia",
             "Sunmark", "Brevia", "Caldon"]
HEADS = ["Bar", "Mel", "Tor", "Lin", "Ash", "Dun"]
TAILS = ["ton", "ville", "burg", "ford", "wick"]
HERE = os.path.dirname(os.path.abspath(__file__))


def make(version: str, contexts: int, seed: int) -> dict:
    rng = random.Random(seed)
    data = []
    for c in range(contexts):
        countries = rng.sample(COUNTRIES, 6)
        facts = [(x, rng.choice(HEADS) + rng.choice(TAILS)) for x in countries]
        context, starts = "", {}
        for x, city in facts:
            sentence = f"The capital of {x} is "
            starts[x] = (len(context) + len(sentence), city)
            context += sentence + city + ". "
        context = context.strip()
        qas = []
        asked = rng.sample(countries, 3)
        for k, x in enumerate(asked):
            start, city = starts[x]
            qas.append({"id": f"{version}-{seed}-{c}-{k}",
                        "question": f"What is the capital of {x}?",
                        "answers": [{"text": city, "answer_start": start}],
                        **({"is_impossible": False} if version == "v2.0" else {})})
        if version == "v2.0" and c % 2 == 0:
            x = rng.choice([y for y in COUNTRIES if y not in countries])
            qas.append({"id": f"{version}-{seed}-{c}-none", "question":
                        f"What is the capital of {x}?", "answers": [], "is_impossible": True})
        data.append({"title": f"capitals-{c}", "paragraphs": [{"context": context,
                                                                "qas": qas}]})
    return {"version": version, "data": data}


def vocab() -> list[str]:
    words = {"the", "capital", "of", "is", "what", ".", "?"}
    words |= {x.lower().replace("é", "e") for x in COUNTRIES} | {h.lower() for h in HEADS}
    return (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
            + [f"##{t}" for t in TAILS])


def main() -> None:
    for version in ("v1.1", "v2.0"):
        for split, n, seed in (("train", 60, 1), ("dev", 11, 2)):
            with open(os.path.join(HERE, f"{split}-{version}.json"), "w") as f:
                json.dump(make(version, n, seed), f, indent=1, ensure_ascii=False)
                f.write("\n")
    os.makedirs(os.path.join(HERE, "vocab"), exist_ok=True)
    with open(os.path.join(HERE, "vocab", "vocab.txt"), "w") as f:
        f.write("\n".join(vocab()) + "\n")
    with open(os.path.join(HERE, "vocab", "tokenizer_config.json"), "w") as f:
        f.write('{"do_lower_case": true}\n')


if __name__ == "__main__":
    main()
