"""The embedded default task: a synthetic, template-generated sentiment set.

It ships as code (no download, no ../shared) so the quickstart runs on a
fresh clone. It is *not* a benchmark: sentences are built from small word
lists, with negations and neutral filler so it is learnable but not trivial.
"""
from __future__ import annotations

import numpy as np

POSITIVE = ["great", "wonderful", "delightful", "moving", "brilliant", "charming", "superb", "gripping",
            "funny", "beautiful", "clever", "touching", "engaging", "excellent", "fresh", "warm"]
NEGATIVE = ["dull", "boring", "awful", "clumsy", "tedious", "bland", "messy", "painful", "lifeless",
            "shallow", "predictable", "weak", "forgettable", "terrible", "annoying", "flat"]
SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the script", "the soundtrack", "the ending",
            "the cast", "the director's work", "the story", "the pacing", "the dialogue"]
ADVERBS = ["", "really ", "quite ", "truly ", "rather ", "very ", "somewhat "]
FILLER = ["", " overall", " in the end", " from start to finish", " for most of its length",
          " despite the long running time", " as far as i could tell"]
TEMPLATES = ["{s} was {a}{w}{f} .", "i thought {s} was {a}{w}{f} .", "{s} is {a}{w}{f} .",
             "honestly , {s} felt {a}{w}{f} ."]
NEGATED = ["{s} was not {a}{w}{f} .", "i would not call {s} {w}{f} .", "{s} is hardly {w}{f} ."]
LABELS = ["negative", "positive"]


def _sentences(n: int, rng: np.random.Generator) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.integers(2))
        negate = rng.random() < 0.2
        word_positive = (label == 1) != negate
        word = rng.choice(POSITIVE if word_positive else NEGATIVE)
        template = rng.choice(NEGATED if negate else TEMPLATES)
        texts.append(template.format(s=rng.choice(SUBJECTS), a=rng.choice(ADVERBS), w=word,
                                     f=rng.choice(FILLER)))
        labels.append(label)
    return texts, labels


def embedded_sentiment(train_size: int = 2000, test_size: int = 500, seed: int = 1234):
    """(train_texts, train_labels, test_texts, test_labels, label_names); fixed seed so
    every rank and every run sees the same task."""
    rng = np.random.default_rng(seed)
    tr_x, tr_y = _sentences(train_size, rng)
    te_x, te_y = _sentences(test_size, rng)
    return tr_x, tr_y, te_x, te_y, list(LABELS)
