"""A generated character corpus: a seeded probabilistic grammar of English-like sentences.

The corpus needs no download and is a pure function of ``(seed, num_chars)``. The
grammar has real structure for a character model to learn: a fixed lexicon (nouns
with irregular plurals, verbs in three forms, names, adjectives, adverbs), subject-verb
agreement, determiner-noun agreement, numbers written in digits, relative clauses
("the cat that sees the dog"), embedded clauses ("anna thinks that ..."), clause
coordination and fronted subordinate clauses with a comma, yes/no questions with
do-support, sentence capitalisation, ``. ! ?`` terminators and paragraph breaks.

Determinism: the only randomness is ``np.random.default_rng(seed).random()``, i.e.
PCG64 doubles (``(next_uint64 >> 11) * 2**-53``), which NumPy keeps stable across
platforms; every choice is made from these doubles in pure Python. Text is generated
sentence by sentence and cut at ``num_chars``, so a shorter corpus is a prefix of a
longer one with the same seed.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------- lexicon

# (singular, plural)
NOUNS = (
    ("cat", "cats"),
    ("dog", "dogs"),
    ("bird", "birds"),
    ("fox", "foxes"),
    ("mouse", "mice"),
    ("child", "children"),
    ("teacher", "teachers"),
    ("farmer", "farmers"),
    ("robot", "robots"),
    ("box", "boxes"),
    ("city", "cities"),
    ("river", "rivers"),
    ("apple", "apples"),
    ("house", "houses"),
    ("ship", "ships"),
    ("key", "keys"),
)
NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack")
ADJECTIVES = (
    "big", "small", "red", "green", "quiet", "happy", "old", "young",
    "bright", "lazy", "clever", "strange",
)  # fmt: skip
ADVERBS = ("quickly", "slowly", "often", "quietly", "today", "again", "yesterday", "well")
PREPOSITIONS = ("near", "under", "with", "behind", "in", "over")
# (third person singular present, plural present / base, past)
TRANSITIVE = (
    ("sees", "see", "saw"),
    ("likes", "like", "liked"),
    ("finds", "find", "found"),
    ("follows", "follow", "followed"),
    ("carries", "carry", "carried"),
    ("watches", "watch", "watched"),
    ("builds", "build", "built"),
    ("helps", "help", "helped"),
    ("knows", "know", "knew"),
)
INTRANSITIVE = (
    ("sleeps", "sleep", "slept"),
    ("runs", "run", "ran"),
    ("sings", "sing", "sang"),
    ("waits", "wait", "waited"),
    ("laughs", "laugh", "laughed"),
    ("jumps", "jump", "jumped"),
    ("swims", "swim", "swam"),
)
CLAUSAL = (
    ("thinks", "think", "thought"),
    ("says", "say", "said"),
    ("believes", "believe", "believed"),
    ("hopes", "hope", "hoped"),
)
DETERMINERS_SINGULAR = ("the", "a", "this", "that", "every", "my")
DETERMINERS_PLURAL = ("the", "some", "these", "those", "many", "my")
COORDINATORS = ("and", "but", "so")
SUBORDINATORS = ("because", "when", "while", "if")
RELATIVES = ("that", "who")
AUXILIARIES = ("does", "do", "did")
TERMINATORS = (".", "!")
DIGITS = "0123456789"

# Words that can begin a sentence (and are capitalised there): subjects' first words,
# fronted subordinators and question auxiliaries. Names are capitalised everywhere.
_STARTERS = (*DETERMINERS_SINGULAR, *DETERMINERS_PLURAL, *SUBORDINATORS, *AUXILIARIES)
_WORDS = (
    *(w for pair in NOUNS for w in pair),
    *NAMES,
    *ADJECTIVES,
    *ADVERBS,
    *PREPOSITIONS,
    *(w for forms in TRANSITIVE + INTRANSITIVE + CLAUSAL for w in forms),
    *DETERMINERS_SINGULAR,
    *DETERMINERS_PLURAL,
    *COORDINATORS,
    *SUBORDINATORS,
    *RELATIVES,
    *AUXILIARIES,
)
# the fixed vocabulary: every character the grammar can produce, sorted (independent of seed)
VOCAB = "".join(
    sorted(set("".join(_WORDS)) | {w[0].upper() for w in _STARTERS} | set(DIGITS) | set(" \n,.!?"))
)
_INDEX = {c: i for i, c in enumerate(VOCAB)}

MAX_DEPTH = 2  # nesting limit for relative and embedded clauses


# ---------------------------------------------------------------------------- grammar


class _Grammar:
    """Recursive sentence generator drawing every choice from ``rng.random()``."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def u(self) -> float:
        return float(self.rng.random())

    def coin(self, p: float) -> bool:
        return self.u() < p

    def pick(self, options):
        return options[min(int(self.u() * len(options)), len(options) - 1)]

    # -- phrases -------------------------------------------------------------------

    def noun_phrase(self, depth: int) -> tuple[str, bool]:
        """``(text, plural)`` of a noun phrase, possibly with a relative clause."""
        r = self.u()
        if r < 0.2:
            return self.pick(NAMES), False
        if r < 0.3:
            number = 2 + min(int(self.u() * 98), 97)  # 2..99, in digits
            words, plural = [str(number)], True
        else:
            plural = self.coin(0.35)
            words = [self.pick(DETERMINERS_PLURAL if plural else DETERMINERS_SINGULAR)]
        for _ in range(2):
            if not self.coin(0.35):
                break
            words.append(self.pick(ADJECTIVES))
        words.append(self.pick(NOUNS)[1 if plural else 0])
        if depth < MAX_DEPTH and self.coin(0.2 / (1 + depth)):
            # relative clause: its verb agrees with the head noun
            words += [self.pick(RELATIVES), self.verb_phrase(plural, self.tense(), depth + 1)]
        return " ".join(words), plural

    def tense(self) -> int:
        """0: present, 2: past (the index of the past form)."""
        return 2 if self.coin(0.4) else 0

    def verb_form(self, forms: tuple[str, str, str], plural: bool, tense: int) -> str:
        if tense == 2:
            return forms[2]
        return forms[1] if plural else forms[0]

    def verb_phrase(self, plural: bool, tense: int, depth: int) -> str:
        r = self.u()
        if r < 0.45:
            verb = self.verb_form(self.pick(TRANSITIVE), plural, tense)
            words = [verb, self.noun_phrase(depth)[0]]
        elif r < 0.85 or depth >= MAX_DEPTH:
            words = [self.verb_form(self.pick(INTRANSITIVE), plural, tense)]
            if self.coin(0.4):
                words.append(self.pick(ADVERBS))
        else:
            verb = self.verb_form(self.pick(CLAUSAL), plural, tense)
            words = [verb, "that", self.clause(depth + 1)]
        if self.coin(0.15):
            words += [self.pick(PREPOSITIONS), self.noun_phrase(MAX_DEPTH)[0]]
        return " ".join(words)

    def clause(self, depth: int) -> str:
        subject, plural = self.noun_phrase(depth)
        return f"{subject} {self.verb_phrase(plural, self.tense(), depth)}"

    def question(self) -> str:
        subject, plural = self.noun_phrase(1)
        aux = "did" if self.coin(0.3) else ("do" if plural else "does")
        if self.coin(0.5):
            rest = f"{self.pick(TRANSITIVE)[1]} {self.noun_phrase(MAX_DEPTH)[0]}"
        else:
            rest = self.pick(INTRANSITIVE)[1]
        return f"{aux} {subject} {rest}?"

    def sentence(self) -> str:
        r = self.u()
        if r < 0.15:
            text = self.question()
        elif r < 0.3:
            text = f"{self.pick(SUBORDINATORS)} {self.clause(1)}, {self.clause(1)}"
            text += self.pick(TERMINATORS) if self.coin(0.2) else "."
        else:
            text = self.clause(0)
            if self.coin(0.25):
                text += f" {self.pick(COORDINATORS + SUBORDINATORS)} {self.clause(1)}"
            text += self.pick(TERMINATORS) if self.coin(0.2) else "."
        return text[0].upper() + text[1:]


def generate_corpus(seed: int, num_chars: int) -> str:
    """``num_chars`` characters of generated text; a pure function of its arguments.

    Sentences are separated by a space, or by a newline (a paragraph break) with
    probability 0.15. Every character is in :data:`VOCAB`.
    """
    if num_chars < 0:
        raise ValueError(f"num_chars must be >= 0, got {num_chars}")
    grammar = _Grammar(seed)
    parts: list[str] = []
    length = 0
    while length < num_chars:
        if parts:
            parts.append("\n" if grammar.coin(0.15) else " ")
            length += 1
        parts.append(grammar.sentence())
        length += len(parts[-1])
    return "".join(parts)[:num_chars]


def encode(text: str) -> np.ndarray:
    """Token ids (int32 indices into :data:`VOCAB`) of ``text``."""
    return np.fromiter((_INDEX[c] for c in text), dtype=np.int32, count=len(text))


def decode(tokens) -> str:
    """The text of token ids ``tokens`` (inverse of :func:`encode`)."""
    return "".join(VOCAB[int(t)] for t in np.asarray(tokens).reshape(-1))


SPLIT_PERCENT = {"train": 80, "inner_valid": 5, "outer_valid": 5, "test": 10}


def corpus_data(seed: int, num_chars: int) -> dict[str, np.ndarray]:
    """The encoded corpus split contiguously 80/5/5/10 into train/inner-/outer-valid/test.

    Returns ``{split: int32[n_split]}`` (numpy; the caller moves it to device). The
    first three sizes are ``floor(percent * num_chars / 100)``; ``test`` takes the rest.
    """
    tokens = encode(generate_corpus(seed, num_chars))
    sizes = [num_chars * SPLIT_PERCENT[s] // 100 for s in ("train", "inner_valid", "outer_valid")]
    bounds = np.cumsum([0, *sizes, num_chars - sum(sizes)])
    return {s: tokens[a:b] for s, a, b in zip(SPLIT_PERCENT, bounds[:-1], bounds[1:])}
