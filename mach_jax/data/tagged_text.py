"""Short multi-label texts generated in code: a small text-classification problem for examples and tests.

    texts, tags, tag_names = make_tagged_texts(600, num_tags=40, seed=0)
    # texts[i]: "orbit lunar ...", tags[i]: [3, 17] (ids into tag_names), deterministic from the seed

Each tag owns a dozen made-up words; a text picks one to three tags (popular tags more often) and
draws most of its words from theirs, the rest from a shared vocabulary of filler words, so a
bag-of-words model can learn the tags but not perfectly.
"""

from __future__ import annotations

import numpy as np

_SYLLABLES = ("ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu "
              "ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu za ze zi zo zu").split()
_TOPICS = ("astronomy biology chemistry physics geology music painting poetry cinema theatre football "
           "tennis cycling sailing cooking baking gardening wine coffee tea travel hiking history "
           "economics finance law politics medicine nursing dentistry software hardware networks "
           "databases robotics aviation railways shipping architecture fashion photography").split()


def make_tagged_texts(num_texts: int = 600, num_tags: int = 40, seed: int = 0, words_per_tag: int = 12,
                      filler_words: int = 400) -> tuple[list[str], list[list[int]], list[str]]:
    """Returns ``(texts [N], tags [N] lists of tag ids, tag_names [L])``, the same for the same seed.

    Args:
      num_texts: N.
      num_tags: L, at most 2 x 40 (names beyond the 40 topics get a suffix).
      seed: the generator's seed.
      words_per_tag: the made-up words each tag owns.
      filler_words: the size of the shared vocabulary of words that say nothing of the tags.
    """
    if not 2 <= num_tags <= 2 * len(_TOPICS):
        raise ValueError(f"num_tags={num_tags}: must be between 2 and {2 * len(_TOPICS)}")
    rng = np.random.default_rng(seed)
    names = [_TOPICS[i % len(_TOPICS)] + ("" if i < len(_TOPICS) else "_2") for i in range(num_tags)]
    vocabulary = sorted({"".join(rng.choice(_SYLLABLES, 3)) for _ in range(num_tags * words_per_tag * 3
                                                                          + filler_words)})
    order = rng.permutation(len(vocabulary))
    own = [[vocabulary[j] for j in order[t * words_per_tag:(t + 1) * words_per_tag]] for t in range(num_tags)]
    filler = [vocabulary[j] for j in order[num_tags * words_per_tag:num_tags * words_per_tag + filler_words]]
    popularity = 1.0 / np.arange(1, num_tags + 1) ** 0.7  # a few tags are common, most are rare
    popularity /= popularity.sum()
    texts, tags = [], []
    for _ in range(num_texts):
        chosen = sorted(rng.choice(num_tags, rng.integers(1, 4), replace=False, p=popularity).tolist())
        words = [rng.choice(own[t]) for t in chosen for _ in range(rng.integers(3, 6))]
        words += list(rng.choice(filler, rng.integers(4, 9)))
        rng.shuffle(words)
        texts.append(" ".join(words))
        tags.append(chosen)
    return texts, tags, names
