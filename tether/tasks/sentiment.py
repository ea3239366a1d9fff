"""Controlled sentiment: continue a movie review; the hidden preference is positivity.

Every prompt and demonstration is generated here from hand-written templates
(no corpus text), so the task is reproducible from a seed and free to ship.
Prompts lean negative, demonstrations mix sentiments, and the gold scorer is
VADER, so RL has measurable room to push continuations positive.

    python -m tether.tasks.sentiment sft OUT.jsonl --n 400 --seed 0
    python -m tether.tasks.sentiment prompts OUT.jsonl --n 500 --seed 0
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tether.tasks.cli import task_main

INSTRUCTION = "Continue this movie review:"

LEANINGS = ("negative", "neutral", "positive")
# Most prompts lean negative so that a positive continuation is a real change.
PROMPT_SHARES = {"negative": 0.60, "neutral": 0.25, "positive": 0.15}
# P(completion sentiment | prompt leaning), ordered as LEANINGS. Completions mostly
# follow their prompt, yet overall come out ~46% negative, ~32% neutral, ~22% positive:
# mixed enough that SFT starts far from the positive optimum RL should reach.
COMPLETION_SHARES = {
    "negative": (0.65, 0.22, 0.13),
    "neutral": (0.20, 0.55, 0.25),
    "positive": (0.15, 0.30, 0.55),
}

# The word tables read better packed than one entry per line.
# fmt: off
# (noun phrase, plural?) -- number decides "was"/"were" and "it"/"they".
Subject = tuple[str, bool]
SUBJECTS: tuple[Subject, ...] = (
    ("acting", False), ("plot", False), ("score", False), ("pacing", False),
    ("ending", False), ("dialogue", False), ("script", False), ("direction", False),
    ("cinematography", False), ("lead performance", False), ("soundtrack", False),
    ("editing", False), ("visual effects", True), ("ensemble cast", False),
    ("characters", True), ("set design", False), ("final act", False), ("costumes", True),
)
# Consonant-initial so that "a {genre}" never needs "an". Subjects and genres avoid
# words in VADER's lexicon ("horror", "romance", "special"), so that the gold score
# tracks the sentiment the text expresses, not the film's topic.
GENRES = (
    "slasher", "drama", "heist film", "spy film", "western", "musical", "period piece",
    "courtroom drama", "sci-fi film", "family film", "mystery", "sequel", "biopic",
    "satire", "fantasy film", "detective story", "sports film", "monster movie",
)

# Every opener ends right before the subject noun phrase, so any completion
# predicate ("was dull ...", "won me over ...") finishes the sentence grammatically.
OPENERS = {
    "negative": (
        "I had high hopes for this {genre}, but sadly the",
        "This {genre} is boring and dull, and the",
        "I nearly walked out of this awful {genre} because the",
        "This {genre} is a miserable chore to sit through, and the",
        "What a disappointing {genre} this was. The",
        "I expected so much more from this {genre}. Sadly, the",
        "Two hours wasted on this {genre}, and the",
        "Everyone raved about this {genre}, but I hated it, and the",
        "I really tried, but this {genre} is dreadful, and the",
        "This {genre} lost me early, mostly because the",
        "For such an overhyped {genre}, it is a mess, and the",
        "I regret paying full price for this {genre}, since the",
        "It pains me to say it, but in this {genre} the",
        "The worst thing about this {genre} is that the",
        "The trailer lied about this {genre}, and the",
        "I was annoyed by this {genre} within minutes. The",
        "This is a lazy, tired {genre}, and the",
        "Another terrible {genre} from a tired studio. The",
    ),
    "neutral": (
        "I watched this {genre} last weekend, and the",
        "I saw this {genre} with my brother, and the",
        "My first thought after this {genre} ended was that the",
        "Going into this {genre}, I knew little about it. The",
        "Having seen this {genre} twice now, I think the",
        "This {genre} runs a little over two hours, and the",
        "I went into this {genre} without reading any reviews, and the",
        "This {genre} is based on a book, and the",
        "I rented this {genre} on a quiet Sunday. The",
        "Compared with the director's last {genre}, the",
    ),
    "positive": (
        "I loved this {genre} from start to finish, and the",
        "What a wonderful surprise this {genre} was. The",
        "This {genre} is a real gem and a true pleasure, and the",
        "I was delighted by this {genre}, especially because the",
        "Easily the best {genre} I have seen this year, and the",
        "I enjoyed every minute of this {genre}, and the",
        "This is a smart, beautiful {genre}, and the",
        "I laughed and cried during this great {genre}. The",
    ),
}

# Completion = predicate finishing the half-sentence + one short extra sentence.
# Each sentiment's templates carry words VADER knows, so the intended sentiment is
# what the gold scorer sees (VADER misses many critic words: "tedious", "clumsy").
PREDICATES = {
    "negative": (
        " {was} {adv} {adj} from the first scene to the last.",
        " never came together, and {it} felt {adj} {moment}.",
        " felt {adj} and {adj2} {moment}, and nobody seemed to notice.",
        " {was} the weakest part of an already {adj} {genre}.",
        " {was} so {adj} {moment} that I kept checking my watch.",
        " made every scene feel {adj} and far longer than it needed to be.",
        " {was} a real letdown, {adv} {adj} throughout.",
        " left {viewer} and me bored and annoyed {moment}.",
        " {was} {adj} and forgettable, which is a shame.",
        " somehow managed to be both {adj} and {adj2}.",
        " {was} {adv} {adj}, and {it} only got worse {moment}.",
        " ruined what little this {genre} had going for it.",
    ),
    "neutral": (
        " {was} about what you would expect from a {genre}.",
        " {was} exactly what the trailer suggested {moment}.",
        " followed a familiar pattern {moment}.",
        " took some getting used to {moment}.",
        " changed noticeably {moment}.",
        " reminded me of several older films, at least {moment}.",
        " {was} handled in a fairly conventional way {moment}.",
        " did roughly what the story required of {them}.",
        " {was} {adv} {adj}, at least by the standards of a {genre}.",
        " {was} {adv} {adj} {moment}, as far as I could tell.",
        " {was} {adv} {adj}, and so {other_was} the {other}.",
    ),
    "positive": (
        " {was} {adv} {adj} and kept me hooked {moment}.",
        " {was} the best part of this {adj} {genre}.",
        " turned out to be the film's greatest strength, along with the {other}.",
        " {was} {adj}, and {it} stayed with me for days.",
        " won me over {moment}.",
        " {was} {adv} {adj} in every single scene.",
        " felt {adj} and {adj2} from beginning to end.",
        " made this one of the most {adj} films I have seen lately.",
        " {was} {adv} {adj}, especially {moment}.",
        " left {viewer} and me smiling {moment}.",
    ),
}
FOLLOW_UPS = {
    "negative": (
        "I would not recommend it at all.",
        "I would never sit through that mess again.",
        "Skip this one; it is a waste of money.",
        "It was a frustrating, tedious evening.",
        "By the end {viewer} and I were bored and annoyed.",
        "Even the {other} could not rescue it.",
        "What a waste of everyone's time.",
        "I left the theater disappointed.",
        "The {other} {other_was} just as bad, sadly.",
        "{stars} at most, for a wasted evening.",
        "Even {viewer} hated it.",
        "A dull, disappointing film overall.",
    ),
    "neutral": (
        "Some viewers will see it differently.",
        "It is the kind of film you watch once on a weeknight.",
        "The {other} {other_was} similar in tone.",
        "Your opinion will depend on your taste in the genre.",
        "I have mixed feelings about the whole thing.",
        "The {other} {other_was} a bit more noticeable.",
        "I may watch it again at some point.",
        "The {other} {other_was} about the same.",
        "{Viewer} had roughly the same reaction.",
        "{stars} out of five.",
        "I saw it with {viewer}, and we discussed it afterwards.",
    ),
    "positive": (
        "I would happily recommend it to {viewer}.",
        "I would happily watch it again with {viewer}.",
        "It was a wonderful evening at the movies.",
        "Even the {other} {other_was} a delight.",
        "Highly recommended for anyone who loves the genre.",
        "This one deserves a much bigger, happier audience.",
        "The {other} {other_was} lovely too.",
        "{stars}, and well earned.",
        "{Viewer} loved it just as much.",
        "A real treat from start to finish.",
    ),
}
ADJECTIVES = {
    "negative": (
        "dull", "boring", "lazy", "messy", "weak", "awkward", "confusing", "dreadful",
        "awful", "terrible", "annoying", "pathetic", "lame", "stupid", "ugly",
        "disappointing", "clumsy", "lifeless",
    ),
    "neutral": (
        "average", "serviceable", "ordinary", "standard", "workmanlike", "typical",
        "passable", "modest",
    ),
    "positive": (
        "superb", "wonderful", "brilliant", "charming", "gorgeous", "delightful",
        "excellent", "stunning", "clever", "beautiful", "terrific", "lovely",
        "fantastic", "great", "amazing", "engaging", "moving", "gripping",
    ),
}
ADVERBS = {
    "negative": ("painfully", "utterly", "remarkably", "thoroughly", "frankly", "completely"),
    "neutral": ("fairly", "mostly", "largely", "more or less"),
    "positive": ("truly", "genuinely", "simply", "remarkably", "consistently", "wonderfully"),
}
MOMENTS = (
    "in the first act", "in the second half", "by the midpoint", "in the final twenty minutes",
    "during the big set piece", "in the quieter scenes", "after the opening scene",
    "toward the end",
)
VIEWERS = (
    "my coworkers", "my partner", "my sister", "my roommate", "my parents",
    "my neighbor", "my whole family", "my film club",
)
STARS = {
    "negative": ("One star", "Two stars"),
    "neutral": ("Three stars", "Two and a half stars"),
    "positive": ("Four stars", "Five stars"),
}
# fmt: on


def format_prompt(beginning: str) -> str:
    """The prompt a chat model sees for one review beginning."""
    return f"{INSTRUCTION}\n\n{beginning}"


def all_beginnings(leaning: str) -> list[tuple[str, str, Subject]]:
    """Every (beginning, genre, subject) a leaning's templates can produce."""
    return [
        (f"{opener.format(genre=genre)} {subject[0]}", genre, subject)
        for opener, genre, subject in itertools.product(OPENERS[leaning], GENRES, SUBJECTS)
    ]


def _counts(n: int) -> dict[str, int]:
    """Split n over leanings by PROMPT_SHARES; neutral takes the rounding slack."""
    neg = round(n * PROMPT_SHARES["negative"])
    pos = round(n * PROMPT_SHARES["positive"])
    return {"negative": neg, "neutral": n - neg - pos, "positive": pos}


def _sample(n: int, rng: random.Random) -> list[tuple[str, str, str, Subject]]:
    """n distinct (leaning, beginning, genre, subject), shuffled across leanings."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    picked: list[tuple[str, str, str, Subject]] = []
    for leaning, k in _counts(n).items():
        pool = all_beginnings(leaning)
        if k > len(pool):
            raise ValueError(
                f"n={n} needs {k} distinct {leaning} beginnings; the templates give {len(pool)}"
            )
        picked += [(leaning, *entry) for entry in rng.sample(pool, k)]
    rng.shuffle(picked)
    return picked


def sample_beginnings(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct (leaning, beginning) pairs; make_prompts formats the same draw."""
    return [(leaning, text) for leaning, text, _, _ in _sample(n, random.Random(seed))]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """n distinct review prompts, ~60% leaning negative, 25% neutral, 15% positive."""
    return [format_prompt(text) for _, text in sample_beginnings(n, seed)]


def _completion(genre: str, subject: Subject, sentiment: str, rng: random.Random) -> str:
    """Finish the half-sentence ending in `subject`, then add one short sentence."""
    plural = subject[1]
    other, other_plural = rng.choice([s for s in SUBJECTS if s != subject])
    adj, adj2 = rng.sample(ADJECTIVES[sentiment], 2)  # distinct: "dull and dull" reads as a bug
    viewer = rng.choice(VIEWERS)
    slots = {
        "was": "were" if plural else "was",
        "it": "they" if plural else "it",
        "them": "them" if plural else "it",
        "genre": genre,
        "adj": adj,
        "adj2": adj2,
        "adv": rng.choice(ADVERBS[sentiment]),
        "other": other,
        "other_was": "were" if other_plural else "was",
        "moment": rng.choice(MOMENTS),
        "viewer": viewer,
        "Viewer": viewer[0].upper() + viewer[1:],
        "stars": rng.choice(STARS[sentiment]),
    }
    predicate = rng.choice(PREDICATES[sentiment]).format(**slots)
    return f"{predicate} {rng.choice(FOLLOW_UPS[sentiment]).format(**slots)}"


def make_demonstrations(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n SFT records {"prompt", "completion"} on distinct prompts, sentiment mixed.

    Completions are about half negative, a third neutral, the rest positive, so
    an SFT model starts far from the positive optimum that RL should reach.
    """
    rng = random.Random(seed)
    records = []
    for leaning, text, genre, subject in _sample(n, rng):
        sentiment = rng.choices(LEANINGS, weights=COMPLETION_SHARES[leaning])[0]
        completion = _completion(genre, subject, sentiment, rng)
        records.append({"prompt": format_prompt(text), "completion": completion})
    return records


_analyzer: SentimentIntensityAnalyzer | None = None


def gold_score(texts: Sequence[str]) -> list[float]:
    """VADER compound sentiment of each text, in [-1, 1]: the hidden preference."""
    global _analyzer
    if _analyzer is None:  # reading the lexicon is the slow part; do it once, on first use
        _analyzer = SentimentIntensityAnalyzer()
    return [_analyzer.polarity_scores(text)["compound"] for text in texts]


def main(argv: Sequence[str] | None = None) -> None:
    task_main(argv, prog="python -m tether.tasks.sentiment",
              description="Write controlled-sentiment SFT demonstrations or RL prompts as "
                          "JSONL.",
              make_prompts=make_prompts, make_demonstrations=make_demonstrations)


if __name__ == "__main__":
    main()
