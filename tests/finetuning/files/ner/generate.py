"""Writes the NER test files here: train.conll, dev.conll, bad_tag.conll and vocab/.

The rule the tiny model learns: a place name after "in" is a location (B-LOC, then I-LOC for the
second word of "new york"), a name after "mr" is a person (B-PER, I-PER for a surname after a
first name); every other word is O. Place and person names are split into several WordPiece
pieces by the vocabulary (ber ##lin, smi ##th), so labels sit on first pieces only. A few long
sentences exceed the tests' max_seq_length and are split into windows.

Deterministic: python tests/finetuning/files/ner/generate.py rewrites the same files.
"""

import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
PLACES = [["berlin"], ["london"], ["madrid"], ["new", "york"], ["paris"], ["oslo"]]
PEOPLE = [["smith"], ["jones"], ["anna", "smith"], ["tom", "jones"], ["brown"]]
NOUNS = ["cat", "dog", "house", "car", "bird", "tree"]
VERBS = ["sits", "runs", "sleeps", "waits", "walks"]
PIECES = {"berlin": ["ber", "##lin"], "london": ["lon", "##don"], "madrid": ["mad", "##rid"],
          "smith": ["smi", "##th"], "jones": ["jo", "##nes"], "paris": ["pa", "##ris"]}


def tagged(words, kind):
    return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]


def sentence(rng):
    noun, verb = rng.choice(NOUNS), rng.choice(VERBS)
    kind = rng.randrange(5)
    if kind == 0:  # the cat sits in berlin
        return [("the", "O"), (noun, "O"), (verb, "O"), ("in", "O")] + tagged(
            rng.choice(PLACES), "LOC")
    if kind == 1:  # mr smith walks the dog
        return [("mr", "O")] + tagged(rng.choice(PEOPLE), "PER") + [
            (verb, "O"), ("the", "O"), (noun, "O")]
    if kind == 2:  # mr jones sits in paris
        return ([("mr", "O")] + tagged(rng.choice(PEOPLE), "PER") + [(verb, "O"), ("in", "O")]
                + tagged(rng.choice(PLACES), "LOC"))
    if kind == 3:  # the dog sleeps in the house
        return [("the", "O"), (noun, "O"), (verb, "O"), ("in", "O"), ("the", "O"),
                (rng.choice(NOUNS), "O")]
    # long: several clauses, longer than 16 pieces
    out = []
    for _ in range(3):
        out += [("the", "O"), (rng.choice(NOUNS), "O"), (rng.choice(VERBS), "O"), ("in", "O")]
        out += tagged(rng.choice(PLACES), "LOC") + [("and", "O")]
    return out[:-1]


def write(path, sentences):
    with open(path, "w") as f:
        f.write("-DOCSTART- O\n\n")
        for s in sentences:
            f.writelines(f"{w} {t}\n" for w, t in s)
            f.write("\n")


def main():
    rng = random.Random(7)
    write(os.path.join(HERE, "train.conll"), [sentence(rng) for _ in range(128)])
    write(os.path.join(HERE, "dev.conll"), [sentence(rng) for _ in range(37)])
    bad = [sentence(rng) for _ in range(3)]
    bad[1][1] = (bad[1][1][0], "LOC-B")
    write(os.path.join(HERE, "bad_tag.conll"), bad)
    words = sorted({w for p in PLACES + PEOPLE for w in p} | set(NOUNS) | set(VERBS)
                   | {"the", "in", "mr", "and"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for w in words:
        for piece in PIECES.get(w, [w]):
            if piece not in vocab:
                vocab.append(piece)
    os.makedirs(os.path.join(HERE, "vocab"), exist_ok=True)
    with open(os.path.join(HERE, "vocab", "vocab.txt"), "w") as f:
        f.writelines(v + "\n" for v in vocab)
    with open(os.path.join(HERE, "vocab", "tokenizer_config.json"), "w") as f:
        f.write('{"do_lower_case": true}')


if __name__ == "__main__":
    main()
