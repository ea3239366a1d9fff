"""Helpful answers: short questions and instructions; the hidden preference is a helpful,
polite, concise answer.

A second built-in task of a different kind from `sentiment`, so that tether is never tuned to
one task. Prompts are short requests ("Explain what a compass does.", "How do I boil an
egg?", "Give one tip for how to sleep better."), written here from hand-written topic lists
and question frames (no corpus text): reproducible from a seed and free to ship.
Demonstrations mix good answers with curt, rude, shouted and rambling ones, so an SFT policy
varies in gold and RL has room to move it.

The gold scorer reads the answer alone. Its raw score is a sum of rules:

  + 0.50 * length     words (n) mapped piecewise-linearly through (1, -1), (15, 0.8),
                      (22, 1.0), (30, 0.8), (50, -0.3), (70, -1): a graded penalty for
                      answers shorter than ~15 or longer than ~30 words
  + 0.30 * helpful    distinct phrases of a helpful, polite register (HELPFUL: "you can",
                      "try", "first", "for example", "make sure", "please", ...), counting up
                      to three: spamming one phrase earns it once
  + 0.10 * variety    distinct words / words
  + 0.10 * plainness  (9 - mean letters per word) / 6, within [0, 1]: plain, short words
  + 0.10 or - 0.30    ends in a complete sentence (., ! or ?), or stops mid-sentence
  - 0.60 per rude     dismissive or rude phrases (RUDE_PHRASES: "no idea", "whatever",
                      "figure it out", "who cares", "look it up yourself", ...), each time
  - 1.50 * repeated   the share of repeated word trigrams (1 - distinct / all)
  - 1.00 * shouting   the share of words of two or more letters written in capitals
  - 0.10 per "!"      after the first, at most 0.40
  - rambling          0.15 per sentence beyond three, 0.15 per list item beyond two,
                      0.03 per comma beyond four, 0.02 per word of the longest sentence
                      beyond thirty
  - 0.40 per word     that an answer is short of four words (one word: -1.2)

and the gold score is the raw score itself within [-0.5, 0.5], squashed smoothly beyond
(sign(x) * (0.5 + 0.5 * tanh(2 * (|x| - 0.5)))), so it lies in (-1, 1) and two bad answers
still differ. Only an empty answer scores -1. A good answer of two sentences and ~20 words
with a polite phrase or two scores about 0.8-0.9, the bare fact in one sentence about 0.6, a
curt few words about 0 or below; rude, shouted or rambling answers mostly below -0.3. Neither
one token nor length alone scores well, and the terms follow word counts and letters, so two
different answers rarely tie.

    python -m tether.tasks.answers sft OUT.jsonl --n 400 --seed 0
    python -m tether.tasks.answers prompts OUT.jsonl --n 500 --seed 0
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

from tether.tasks.cli import task_main

KINDS = ("object", "goal", "task", "concept")

# Question frames per kind; each takes the topic's name.
FRAMES = {
    "object": (
        "Explain what {topic} does.",
        "What is {topic} used for?",
        "Describe {topic} in a sentence or two.",
        "Why would someone use {topic}?",
        "What does {topic} do?",
        "Tell me briefly what {topic} is for.",
    ),
    "goal": (
        "Give one tip for how to {topic}.",
        "How can I {topic}?",
        "What is a simple way to {topic}?",
        "Any advice on how to {topic}?",
        "Suggest one habit that would help me {topic}.",
        "I want to {topic}. Where should I start?",
    ),
    "task": (
        "How do I {topic}?",
        "Explain how to {topic}.",
        "What are the steps to {topic}?",
        "What is the easiest way to {topic}?",
        "Can you tell me how to {topic}?",
        "Walk me through how to {topic}.",
    ),
    "concept": (
        "What is {topic}?",
        "Explain {topic} to a child.",
        "Explain {topic} in simple words.",
        "Give me a short explanation of {topic}.",
        "Can you explain {topic}?",
        "Help me understand {topic}.",
    ),
}

# (topic, fact): the fact completes the answer's core sentence. Objects and concepts: a
# predicate after the topic ("A compass" + " shows ..."); goals and tasks: an imperative.
# The part before the first comma stands alone as the curt answer. Facts avoid the HELPFUL
# phrases, so the register comes from the answer's framing, not its topic.
# fmt: off
TOPICS: dict[str, tuple[tuple[str, str], ...]] = {
    "object": (
        ("a compass", "shows which way is north, so a hiker can keep to a route"),
        ("a thermometer", "measures temperature, whether of the air, water or a person"),
        ("a stethoscope",
         "lets a doctor listen to the heart and lungs, which helps spot problems early"),
        ("a spirit level",
         "checks whether a surface is flat, using a bubble in a small tube of liquid"),
        ("a barometer", "measures air pressure, which hints at the weather on its way"),
        ("a colander", "drains water from cooked food, keeping the food in the bowl"),
        ("a smoke detector", "senses smoke in the air, and sounds a loud alarm to warn people"),
        ("a dehumidifier",
         "pulls moisture out of the air, which keeps a damp room from growing mould"),
        ("a tape measure", "measures lengths and distances, and rolls back up into a small case"),
        ("a pressure cooker",
         "cooks food quickly under steam pressure, so dry beans soften in minutes"),
        ("a stud finder",
         "locates the wooden beams behind a wall, so a shelf can be hung securely"),
        ("a rain gauge", "collects rain in a marked tube, showing how much fell in a day"),
        ("a whisk", "beats air into eggs or cream, making them light and fluffy"),
        ("a multimeter",
         "tests electrical circuits, measuring voltage, current and resistance to track down "
         "faults"),
        ("a sundial", "tells the time from the shadow a pointer casts in sunlight"),
        ("a magnifying glass",
         "makes small things look bigger, by bending light through a curved lens"),
        ("a pedometer", "counts the steps a person takes, giving a rough idea of daily activity"),
        ("a circuit breaker", "cuts the power when a circuit is overloaded, which prevents fires"),
        ("a kettle", "heats water quickly, and switches itself off once the water boils"),
        ("a router", "passes internet traffic between the devices in a home, over cables or radio"),
        ("a dishwasher", "sprays hot water and soap over dishes, cleaning them without scrubbing"),
        ("a metronome", "ticks at a steady beat, helping musicians keep an even tempo"),
        ("a hygrometer", "measures humidity, telling how much moisture is in the air"),
        ("a mortar and pestle", "grinds spices and herbs by hand, releasing their flavour"),
        ("a fire extinguisher",
         "puts out small fires, spraying foam, powder or gas that cuts off their air"),
        ("a telescope",
         "gathers light from distant objects, so faint stars and planets look bright and large"),
        ("a microscope",
         "magnifies tiny things, like cells that are too small to see with the eye alone"),
        ("a thermostat", "switches the heating on and off, holding a room near a set temperature"),
        ("a surge protector", "shields plugged-in devices from sudden spikes in voltage"),
        ("a French press",
         "brews coffee by steeping the grounds in hot water, then pressing them down with a mesh "
         "filter"),
        ("a carbon monoxide alarm",
         "detects carbon monoxide, a poisonous gas with no smell, and sounds a warning"),
        ("a wrench", "grips and turns nuts and bolts, giving extra leverage"),
        ("a sextant",
         "measures the angle between the horizon and a star, which sailors used to find their "
         "position"),
        ("a seismometer", "records ground shaking, which is how scientists measure earthquakes"),
        ("a food processor", "cuts and blends food in seconds, saving a lot of knife work"),
        ("a humidifier", "adds moisture to dry air, which can ease a dry throat in winter"),
        ("an anemometer", "measures wind speed, usually with small cups that spin in the wind"),
        ("a padlock", "locks a gate or locker, opening only with the right key or code"),
        ("a solar panel", "turns sunlight into electricity, with no moving parts"),
        ("a water filter", "removes dirt and some chemicals from tap water, improving its taste"),
        ("a slow cooker",
         "cooks food at a low heat for hours, which makes cheap cuts of meat tender"),
        ("a lightning rod",
         "gives lightning a safe path into the ground, protecting the building below"),
    ),
    "goal": (
        ("sleep better",
         "keep the same bedtime every night, and put screens away an hour before bed"),
        ("save money on groceries", "plan meals for the week, and shop with a list"),
        ("drink more water", "keep a filled bottle on your desk, and refill it at each meal"),
        ("focus while studying",
         "put your phone in another room, and work in blocks of twenty-five minutes"),
        ("wake up earlier",
         "move your alarm fifteen minutes earlier each week, and get daylight soon after waking"),
        ("keep houseplants alive",
         "water only when the top of the soil feels dry, and give them bright indirect light"),
        ("remember names",
         "repeat a name aloud when you hear it, and link it to something about the person"),
        ("stretch more often",
         "stand up each hour, and spend a minute reaching for your toes and the ceiling"),
        ("cut down on sugar",
         "swap sweet drinks for water or tea, and read labels for hidden sugar"),
        ("feel less stressed at work",
         "take a short walk at lunch, and write down tomorrow's tasks before leaving"),
        ("read more books", "carry a book everywhere, and read ten pages before bed"),
        ("learn a new language",
         "practise for fifteen minutes every day, and speak out loud from the start"),
        ("keep a tidy kitchen", "wash up right after cooking, and wipe the counters before bed"),
        ("make friends in a new city",
         "join a weekly class or club, and go back often enough to be recognised"),
        ("run farther",
         "add no more than a tenth to your weekly distance, and keep most runs easy"),
        ("spend less time on my phone",
         "turn off all but the most important notifications, and keep the phone out of the "
         "bedroom"),
        ("eat more vegetables",
         "add one vegetable to every meal, starting with ones you already like"),
        ("write better emails",
         "put the main request in the opening line, and keep paragraphs short"),
        ("stay warm in winter", "wear thin layers, and keep your hands, feet and head covered"),
        ("get better at public speaking",
         "rehearse out loud several times, and record yourself to spot habits"),
        ("stick to a budget",
         "write down every purchase for a month, and set a weekly spending limit"),
        ("keep my bike in good shape",
         "check the tyre pressure weekly, and oil the chain after wet rides"),
        ("improve my posture",
         "set your screen at eye level, and keep your feet flat on the floor"),
        ("be more patient with kids",
         "pause for a slow breath before answering, and get down to their eye level"),
        ("keep a journal", "write three lines every evening, and keep the notebook by your bed"),
        ("cook more at home",
         "keep a few simple recipes on hand, and prepare ingredients on the weekend"),
        ("reduce food waste",
         "store leftovers in clear boxes at eye level, and plan one meal around them each week"),
        ("keep my car running well",
         "change the oil on schedule, and check the tyres once a month"),
        ("feel more rested",
         "go to bed at the same time each night, and keep coffee to the morning"),
        ("get along with a roommate",
         "agree on chores early, and raise small problems before they grow"),
        ("study for an exam",
         "quiz yourself on the material, and spread your sessions over several days"),
        ("save energy at home", "seal drafty windows, and turn the heating down by one degree"),
        ("learn to draw",
         "sketch something small every day, and copy simple shapes before whole scenes"),
        ("stay safe while hiking",
         "tell someone your route, and carry water, a map and a warm layer"),
        ("keep my passwords safe",
         "use a password manager, and turn on two-factor sign-in where offered"),
        ("be on time more often",
         "set your alarm for when you must leave, not for when you must arrive"),
        ("grow herbs on a windowsill", "choose a sunny window, and use pots with drainage holes"),
        ("walk more each day", "take the stairs, and get off the bus one stop early"),
        ("calm down before an interview",
         "breathe out slowly for a count of six, and arrive ten minutes early"),
        ("make my shoes last longer",
         "rotate between two pairs, and let wet shoes dry away from direct heat"),
    ),
    "task": (
        ("boil an egg",
         "lower the egg into boiling water for nine minutes, then cool it in cold water"),
        ("change a bike tyre",
         "let the air out and lever the tyre off, then fit the new tube and pump it up"),
        ("make a cup of tea",
         "pour just-boiled water over the tea bag, and let it steep for three to five minutes"),
        ("unclog a sink",
         "pour in a kettle of boiling water, and work a plunger over the drain while it stays "
         "blocked"),
        ("write a thank-you note",
         "name the gift or favour, say how it helped you, and close with warm wishes"),
        ("jump-start a car",
         "connect red to both positive terminals and black to bare metal, then start the working "
         "car"),
        ("sew on a button",
         "stitch through the holes several times, and wind the thread under the button before "
         "knotting"),
        ("clean a cast iron pan",
         "scrub it with hot water and a brush, then dry it and rub in a little oil"),
        ("cook rice",
         "simmer one cup of rinsed rice in two cups of water for fifteen minutes, then let it "
         "rest covered"),
        ("hang a picture",
         "mark the height you want, tap in a picture hook at that mark, and hang the frame"),
        ("reset a router",
         "unplug it for thirty seconds, then plug it back in and wait for the lights to settle"),
        ("plant a tree",
         "dig a hole twice as wide as the roots, set the tree in, and water it deeply"),
        ("fold a fitted sheet",
         "tuck the corners into each other, lay it flat, and fold it into a rectangle"),
        ("iron a shirt",
         "press the collar and cuffs, then the sleeves and the body on a medium setting"),
        ("make pancakes",
         "whisk flour with milk and eggs into a smooth batter, and cook ladlefuls in a hot "
         "buttered pan"),
        ("tie a tie",
         "cross the wide end over, loop it up through the neck, and pull it down through the knot"),
        ("back up my phone",
         "turn on cloud backup in the settings, and let it run while charging on wifi"),
        ("descale a kettle",
         "boil a mix of water and vinegar in it, let it sit an hour, and rinse it well"),
        ("remove a splinter",
         "wash the area, grip the end with clean tweezers, and pull it out along its angle"),
        ("make a budget",
         "list your monthly income and fixed costs, and split what is left into savings and "
         "spending"),
        ("patch a hole in drywall",
         "fill it with spackle, let it dry, sand it smooth, and paint over it"),
        ("bleed a radiator",
         "turn the heating off, open the valve with a radiator key, and close it when water "
         "appears"),
        ("defrost a freezer",
         "empty and unplug it, set towels around it, and let the ice melt with the door open"),
        ("wrap a present",
         "cut paper to fit around the box with a little overlap, fold the ends neatly, and tape "
         "them"),
        ("sharpen a kitchen knife",
         "draw the blade across a whetstone at a shallow angle, and give each side the same "
         "number of strokes"),
        ("make cold brew coffee",
         "steep coarse grounds in cold water overnight, and strain them out in the morning"),
        ("start a compost pile",
         "mix green scraps with dry leaves, keep it damp, and turn it every couple of weeks"),
        ("clean a laptop screen",
         "switch it off, and wipe it softly with a slightly damp microfibre cloth"),
        ("wash a wool sweater",
         "hand-wash it in cool water with mild soap, and dry it flat on a towel"),
        ("change a light bulb",
         "switch off the power, let the old bulb cool, and screw in a new one of the same type"),
        ("make a paper airplane",
         "fold a sheet in half lengthwise, fold the top corners to the centre, and fold down the "
         "wings"),
        ("replace a shower head",
         "unscrew the old one, wrap the thread with plumber's tape, and screw on the new one by "
         "hand"),
        ("check my tyre pressure",
         "press a gauge onto the valve while the tyres are cold, and compare with the number in "
         "the door frame"),
        ("clean a whiteboard",
         "wipe it with a dry eraser, and use a little rubbing alcohol for old marks"),
        ("remove a stain from a shirt",
         "blot it, rinse it from the back with cold water, and rub in soap before washing"),
        ("pack a suitcase",
         "roll your clothes, put heavy items near the wheels, and keep liquids in one bag"),
        ("dress a salad",
         "toss the leaves with a pinch of salt, then add oil and a splash of vinegar"),
        ("water a lawn",
         "water deeply once or twice a week in the early morning, rather than a little every day"),
        ("sew a hem",
         "fold the edge under twice, pin it, and stitch along the fold with small even stitches"),
        ("clean a coffee maker",
         "run a cycle of half water and half vinegar, then two cycles of plain water"),
    ),
    "concept": (
        ("photosynthesis",
         "is how plants make their own food, turning sunlight, water and air into sugar"),
        ("compound interest",
         "is interest paid on your savings and on the interest already added, so the total grows "
         "faster"),
        ("a leap year",
         "is a year with an extra day, February 29, which keeps the calendar in step with the "
         "seasons"),
        ("the water cycle",
         "is the endless journey of water, which evaporates, forms clouds, falls as rain and "
         "flows back to the sea"),
        ("gravity",
         "is the pull that objects with mass have on each other, which keeps us on the ground"),
        ("inflation",
         "is a general rise in prices, which means each dollar buys a little less over time"),
        ("an eclipse",
         "happens when the moon or the earth blocks sunlight, casting a shadow on the other"),
        ("a vaccine",
         "trains the immune system to recognise a germ, so the body can fight it off quickly "
         "later"),
        ("recycling",
         "is turning used materials into new products, which saves raw materials and energy"),
        ("a food chain", "shows who eats whom, from plants up to the animals at the top"),
        ("erosion", "is the slow wearing away of rock and soil, by water, wind or ice"),
        ("a budget deficit", "happens when a government spends more than it collects in a year"),
        ("the greenhouse effect",
         "is how gases in the air trap heat from the sun, keeping the planet warm"),
        ("friction",
         "is the force that resists two surfaces sliding past each other, which is why brakes "
         "work"),
        ("a time zone",
         "is a region that keeps the same clock time, set by its position relative to the sun"),
        ("evaporation",
         "is liquid turning into vapour, the way a puddle slowly disappears on a warm day"),
        ("an allergy",
         "is the immune system overreacting to something harmless, like pollen or peanuts"),
        ("a tide",
         "is the regular rise and fall of the sea, caused mostly by the pull of the moon"),
        ("democracy", "is a system where people choose their leaders and laws by voting"),
        ("a habit", "is an action repeated so often that it happens almost automatically"),
        ("supply and demand",
         "is the idea that prices rise when something is scarce, and fall when it is plentiful"),
        ("a rainbow",
         "appears when sunlight bends through raindrops, splitting into its separate colours"),
        ("an echo",
         "is a sound bouncing off a hard surface, and coming back to your ears a moment later"),
        ("metabolism", "is all the chemical work your body does to turn food into energy"),
        ("a credit score", "is a number lenders use to judge how reliably a person repays debts"),
        ("a fossil",
         "is the preserved remains or trace of a plant or animal from long ago, usually in rock"),
        ("static electricity",
         "is a build-up of charge on a surface, which is why a balloon can stick to a wall"),
        ("a heatwave", "is a stretch of unusually hot weather, lasting several days or more"),
        ("a carbon footprint",
         "is the total greenhouse gas a person or activity produces, counted as carbon dioxide"),
        ("an ecosystem",
         "is a community of living things and their surroundings, all depending on each other"),
        ("a volcano", "is an opening in the earth's crust, where melted rock, ash and gas escape"),
        ("an index fund",
         "is an investment that holds every stock in a market index, so it spreads risk widely"),
        ("buoyancy", "is the upward push of a liquid, which is why a boat floats"),
        ("a calorie", "is a unit of energy, used to measure how much energy food gives the body"),
        ("a metaphor", "describes one thing as if it were another, like calling time a thief"),
        ("the placebo effect",
         "is when people feel better after a treatment with no active ingredient, because they "
         "expect to"),
        ("a black hole", "is a region where gravity is so strong that not even light can escape"),
        ("an atom",
         "is the smallest unit of an element, made of a nucleus with electrons around it"),
        ("a mortgage", "is a loan for buying a home, repaid over many years with interest"),
        ("opportunity cost", "is what you give up when you choose one option over another"),
    ),
}
# fmt: on

# Answer qualities of the demonstrations and their shares: about a third good, the rest
# plain, curt, rambling, rude or shouted, so SFT starts well below the optimum.
QUALITY_SHARES = {"good": 0.32, "plain": 0.18, "curt": 0.15, "rambling": 0.15, "rude": 0.12,
                  "shouty": 0.08}

# A good answer: an opener leading into the core sentence, then one helpful closing sentence.
GOOD_OPENERS = {
    "object": ("{Core}", "Sure! {Core}", "Good question. {Core}"),
    "goal": ("Try to {fact}.", "A good way is to {fact}.", "You can {fact}.",
             "One simple tip: {fact}."),
    "task": ("First, {fact}.", "To {topic}, first {fact}.", "Sure. First, {fact}."),
    "concept": ("{Core}", "Sure! {Core}", "In simple words, {core}"),
}
GOOD_TAILS = {
    "object": (
        "If you have never used one, try it once with someone who has.",
        "Make sure to read its instructions first so you know its limits.",
        "I hope this helps, and feel free to ask how to use one.",
        "If you want to learn more, try watching a short video of one in use.",
    ),
    "goal": (
        "Start small, and give it a week or two before you judge the result.",
        "It helps to pick one change at a time so it is easy to keep.",
        "If one day goes badly, simply start again the next day.",
        "Good luck, and be patient with yourself at the start.",
    ),
    "task": (
        "Take your time the first time, and it gets easier after that.",
        "If something looks wrong, stop and check the last step again.",
        "Make sure you have everything ready before you start.",
        "I hope this helps, and good luck!",
    ),
    "concept": (
        "For example, you can notice it in everyday life once you know to look for it.",
        "A good way to remember it is to picture it step by step.",
        "If you want, try explaining it back in your own words to check it sticks.",
        "I hope this helps, and feel free to ask for an example.",
    ),
}
RUDE = (
    "No idea why you would need this, but {core}",
    "Whatever. {Curt} Figure out the rest yourself.",
    "{Curt} Obviously. Look it up yourself next time.",
    "Ugh, who cares? {Core}",
    "{Core} Honestly, everyone knows that, so don't bother asking again.",
    "Seriously? {Curt} Not my problem if you get it wrong.",
)
SHOUTY = (
    "{CORE_UP}!!!",
    "{CURT_UP} {TAIL_UP}",
    "LISTEN. {CORE_UP}!! {Tail}",
    "{Curt} THAT IS IT!!! NOTHING MORE TO IT!!!",
)
RAMBLING = (
    "Well, so, basically, {core} And also, {core} And also, there are a lot of other things "
    "to say about this, like this and that and this and that, and so on and so on, and",
    "There are many things to know about this:\n1. {Curt}\n2. It depends.\n3. It really "
    "depends.\n4. It depends on a lot of things.\n5. {Curt}\n6. {Core}",
    "{Core} {Core} Also it depends on many things, like the time, the place, the weather, the "
    "mood, the season, the budget, the people around you, and more, and more.",
    "{Core} {Tail} Then again, there is a lot more to it, and you could also think about the "
    "history of it, the other ways of doing it, the other people who",
)

# The scorer's lexicons, matched as whole words on the lower-cased answer.
HELPFUL = (
    "you can", "try", "first", "for example", "such as", "make sure", "it helps", "start by",
    "a good way", "please", "hope this helps", "good luck", "if you", "remember to",
    "feel free", "happy to help", "step by step", "tip",
)
RUDE_PHRASES = (
    "no idea", "whatever", "figure it out", "figure out the rest", "who cares",
    "not my problem", "google it", "look it up yourself", "don't bother", "do it yourself",
    "stupid", "dumb", "idiot", "obviously", "duh", "ugh", "shut up", "waste of time",
    "i don't know", "ask someone else", "everyone knows", "seriously",
)
LENGTH_KNOTS = ((1, -1.0), (15, 0.8), (22, 1.0), (30, 0.8), (50, -0.3), (70, -1.0))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _low(text: str) -> str:
    return text[:1].lower() + text[1:]


def all_prompts() -> list[tuple[str, str, str, str]]:
    """Every (kind, prompt, topic, fact) the frames and topics give, in a fixed order."""
    return [(kind, frame.format(topic=topic), topic, fact)
            for kind in KINDS for frame in FRAMES[kind] for topic, fact in TOPICS[kind]]


def _sample(n: int, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """n distinct (kind, prompt, topic, fact), in random order."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    pool = all_prompts()
    if n > len(pool):
        raise ValueError(f"n={n} needs {n} distinct prompts; the templates give {len(pool)}")
    return rng.sample(pool, n)


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """n distinct questions and instructions, kinds mixed."""
    return [prompt for _, prompt, _, _ in _sample(n, random.Random(seed))]


def _answer(kind: str, topic: str, fact: str, quality: str, rng: random.Random) -> str:
    """One answer of the given quality to a prompt about `topic`."""
    if kind in ("object", "concept"):
        core = f"{_cap(topic)} {fact}."
        curt = f"It {fact.split(',')[0]}."
    else:
        core = f"{_cap(fact)}."
        curt = f"{_cap(fact.split(',')[0])}."
    tail = rng.choice(GOOD_TAILS[kind])
    slots = {"Core": core, "core": _low(core), "Curt": curt, "Tail": tail, "fact": fact,
             "topic": re.sub(r"\bmy\b", "your", topic), "CORE_UP": core.upper().rstrip("."),
             "CURT_UP": curt.upper(), "TAIL_UP": tail.upper()}
    if quality == "good":
        return f"{rng.choice(GOOD_OPENERS[kind]).format(**slots)} {tail}"
    if quality == "plain":
        return core
    if quality == "curt":
        return curt
    table = {"rude": RUDE, "shouty": SHOUTY, "rambling": RAMBLING}[quality]
    return rng.choice(table).format(**slots)


def make_demonstrations(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n SFT records {"prompt", "completion"} on distinct prompts, answer quality mixed
    (QUALITY_SHARES): about a third good, the rest plain, curt, rambling, rude or shouted."""
    rng = random.Random(seed)
    qualities, weights = list(QUALITY_SHARES), list(QUALITY_SHARES.values())
    records = []
    for kind, prompt, topic, fact in _sample(n, rng):
        quality = rng.choices(qualities, weights=weights)[0]
        records.append({"prompt": prompt, "completion": _answer(kind, topic, fact, quality, rng)})
    return records


_WORD = re.compile(r"[a-z0-9']+")
_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _length_term(n: int) -> float:
    """Piecewise-linear through LENGTH_KNOTS, -1 outside them."""
    for (x0, y0), (x1, y1) in zip(LENGTH_KNOTS, LENGTH_KNOTS[1:], strict=False):
        if x0 <= n <= x1:
            return y0 + (y1 - y0) * (n - x0) / (x1 - x0)
    return -1.0


def _squash(x: float) -> float:
    """x within [-0.5, 0.5]; beyond, a tanh that meets it with slope 1 and stays in (-1, 1)."""
    if abs(x) <= 0.5:
        return x
    return math.copysign(0.5 + 0.5 * math.tanh(2 * (abs(x) - 0.5)), x)


def _count(phrase: str, padded: str) -> int:
    return padded.count(f" {phrase} ")


def score_answer(text: str) -> float:
    """The gold score of one answer, in [-1, 1]; the rules are in the module docstring."""
    text = text.replace("\u2019", "'").strip()
    words = _WORD.findall(text.lower())
    n = len(words)
    if n == 0:
        return -1.0
    padded = f" {' '.join(words)} "
    score = 0.5 * _length_term(n)
    score += 0.3 * min(sum(_count(p, padded) > 0 for p in HELPFUL), 3) / 3
    score += 0.1 * len(set(words)) / n
    score += 0.1 * min(max((9 - sum(map(len, words)) / n) / 6, 0.0), 1.0)
    score += 0.1 if re.search(r"[.!?][\"')\]]*$", text) else -0.3
    score -= 0.6 * sum(_count(p, padded) for p in RUDE_PHRASES)
    if n >= 3:
        trigrams = list(zip(words, words[1:], words[2:], strict=False))
        score -= 1.5 * (1 - len(set(trigrams)) / len(trigrams))
    lettered = [w for w in re.findall(r"[A-Za-z']+", text) if sum(c.isalpha() for c in w) >= 2]
    if lettered:
        score -= sum(w.upper() == w for w in lettered) / len(lettered)
    score -= min(0.1 * max(text.count("!") - 1, 0), 0.4)
    sentences = [s for s in _SENTENCE_END.split(text) if re.search(r"[A-Za-z]", s)]
    longest = max((len(_WORD.findall(s.lower())) for s in sentences), default=n)
    score -= 0.15 * max(len(sentences) - 3, 0) + 0.15 * max(len(_LIST_ITEM.findall(text)) - 2, 0)
    score -= 0.03 * max(text.count(",") - 4, 0) + 0.02 * max(longest - 30, 0)
    score -= 0.4 * max(4 - n, 0)
    return _squash(score)


def gold_score(texts: Sequence[str]) -> list[float]:
    """Helpfulness, politeness and concision of each answer, in [-1, 1]: the hidden
    preference (rules in the module docstring)."""
    return [score_answer(text) for text in texts]


def main(argv: Sequence[str] | None = None) -> None:
    task_main(argv, prog="python -m tether.tasks.answers",
              description="Write helpful-answers SFT demonstrations or RL prompts as JSONL.",
              make_prompts=make_prompts, make_demonstrations=make_demonstrations,
              max_prompts=len(all_prompts()))


if __name__ == "__main__":
    main()
