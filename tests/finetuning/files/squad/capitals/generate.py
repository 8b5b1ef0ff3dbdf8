"""Writes the tiny SQuAD files of tests/finetuning/test_qa.py into this directory (deterministic).

A context is eight sentences: seven "<country> is near <country>." and one
"The capital of <country> is <city>." at a random place, about 45 word pieces, so a 48-token
window cannot hold it (the doc stride matters, and a fact near the end is only seen by a later
window). Two questions ask for that capital ("What is the capital of X?", "Which city is the
capital of X?"). The city is the only one in the context, so even a tiny model learns to find
it in a few dozen steps. City names are two word pieces ("Tor" "##wick"); one country is
accented ("Estéria", the uncased vocab holds "esteria"). In v2.0 every third context has no
capital sentence and one question about a country it does not name (is_impossible).
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
        x, *others = rng.sample(COUNTRIES, 8)
        sentences = [f"{a} is near {rng.choice(others)}." for a in others]
        impossible = version == "v2.0" and c % 3 == 2
        if not impossible:
            city = rng.choice(HEADS) + rng.choice(TAILS)
            sentences.insert(rng.randrange(len(sentences) + 1),
                             f"The capital of {x} is {city}.")
        context = " ".join(sentences)
        flag = {"is_impossible": impossible} if version == "v2.0" else {}
        if impossible:
            qas = [{"id": f"{version}-{seed}-{c}-0", "question": f"What is the capital of {x}?",
                    "answers": [], **flag}]
        else:
            start = context.index(f"The capital of {x} is ") + len(f"The capital of {x} is ")
            qas = [{"id": f"{version}-{seed}-{c}-{k}", "question": q,
                    "answers": [{"text": city, "answer_start": start}], **flag}
                   for k, q in enumerate([f"What is the capital of {x}?",
                                          f"Which city is the capital of {x}?"])]
        data.append({"title": f"capitals-{c}", "paragraphs": [{"context": context,
                                                                "qas": qas}]})
    return {"version": version, "data": data}


def vocab() -> list[str]:
    words = {"the", "capital", "of", "is", "what", "which", "city", "near", ".", "?"}
    words |= {x.lower().replace("é", "e") for x in COUNTRIES} | {h.lower() for h in HEADS}
    return (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
            + [f"##{t}" for t in TAILS])


def main() -> None:
    for version in ("v1.1", "v2.0"):
        for split, n, seed in (("train", 80, 1), ("dev", 14, 2)):
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
