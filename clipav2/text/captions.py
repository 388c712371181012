"""Realistic, varied image captions for benchmarks and tests (no caption data set ships with any
package we use). They imitate web alt text: plain descriptions, stock-photo titles, product
listings, multi-sentence captions, numbers, punctuation and capitals, 5 to 40 words each.

    captions = generate_captions(10_000, seed=0)
"""
import random

SUBJECTS = [
    "dog", "puppy", "cat", "kitten", "horse", "cow", "bird", "parrot", "man", "woman", "girl", "boy",
    "child", "couple", "family", "chef", "surfer", "skateboarder", "cyclist", "teacher", "soldier",
    "car", "truck", "bicycle", "motorcycle", "train", "airplane", "boat", "bus", "house", "bridge",
    "tower", "castle", "church", "building", "tree", "flower", "mountain", "lake", "river", "beach",
    "pizza", "sandwich", "cake", "bowl of soup", "cup of coffee", "laptop", "phone", "guitar", "sofa",
    "kitchen", "bedroom", "street", "market", "stadium", "garden", "forest", "desert", "city skyline",
]
ADJECTIVES = [
    "small", "large", "old", "young", "happy", "red", "blue", "green", "yellow", "black", "white",
    "brown", "wooden", "modern", "vintage", "beautiful", "tall", "tiny", "colorful", "busy", "empty",
    "quiet", "sunny", "snowy", "rainy", "fluffy", "shiny", "rusty", "bright", "dark", "crowded",
    "delicious", "abandoned", "elegant", "cozy", "ancient", "famous", "fresh", "wet", "golden",
]
VERBS = [
    "sitting on", "standing next to", "running across", "walking along", "lying on", "jumping over",
    "looking at", "playing with", "parked in front of", "flying over", "riding", "holding",
    "eating", "carrying", "leaning against", "reflected in", "hanging above", "crossing",
]
PLACES = [
    "the park", "a sandy beach", "the kitchen table", "a busy street", "the snow", "a wooden fence",
    "the living room", "a green field", "the city center", "an old bridge", "the mountains",
    "a farmers market", "the harbor", "a sunny garden", "the train station", "a quiet lake",
]
TIMES = ["at sunset", "in the morning", "at night", "during winter", "in the rain", "on a summer day",
         "in autumn", "under a cloudy sky", "after the storm", "in 2019", "on christmas eve"]
STYLES = ["Stock photo of", "A close-up of", "Aerial view of", "Black and white photo of",
          "Watercolor painting of", "Illustration of", "Portrait of", "Photo:", "Image of", ""]
BRANDS = ["Nike", "IKEA", "Samsung", "Levi's", "Canon", "LEGO", "Adidas", "Philips"]
PRODUCTS = ["T-Shirt", "Sneakers", "Backpack", "Coffee Mug", "Desk Lamp", "Wall Clock", "Sofa Cover",
            "Phone Case", "Water Bottle", "Rug"]
EXTRAS = ["Free shipping!", "Size M.", "Royalty free.", "#travel #photography", "(c) 2021",
          "Click to enlarge.", "Best seller.", "Made in Italy.", "New!", "100% cotton."]


def _noun_phrase(rng: random.Random) -> str:
    article = rng.choice(["a", "the", "two", "three", "an old", "my", "this"])
    adjectives = " ".join(rng.sample(ADJECTIVES, rng.choice([0, 1, 1, 2])))
    noun = rng.choice(SUBJECTS)
    if article in ("two", "three") and not noun.endswith("s"):
        noun += "s"
    return " ".join(w for w in (article, adjectives, noun) if w)


def _sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:  # product listing
        return (f"{rng.choice(BRANDS)} {rng.choice(ADJECTIVES).title()} {rng.choice(PRODUCTS)} - "
                f"{rng.choice(ADJECTIVES).title()} | {rng.choice(EXTRAS)}")
    parts = [rng.choice(STYLES), _noun_phrase(rng), rng.choice(VERBS), rng.choice([_noun_phrase(rng), rng.choice(PLACES)])]
    if rng.random() < 0.5:
        parts += ["in" if rng.random() < 0.5 else "near", rng.choice(PLACES)]
    if rng.random() < 0.4:
        parts.append(rng.choice(TIMES))
    if rng.random() < 0.2:
        parts += ["while", _noun_phrase(rng), "is", rng.choice(VERBS).split()[0], rng.choice(PLACES)]
    text = " ".join(p for p in parts if p)
    text = text[0].upper() + text[1:]
    return text + rng.choice([".", ".", "", "!", ","])


def generate_captions(n: int, seed: int = 0, min_words: int = 5, max_words: int = 40) -> list[str]:
    """`n` captions of `min_words`..`max_words` whitespace-separated words, deterministic in `seed`."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target = rng.randint(min_words, max_words)
        words: list[str] = []
        while len(words) < target:
            words += _sentence(rng).split()
            if rng.random() < 0.1:
                words += rng.choice(EXTRAS).split()
        out.append(" ".join(words[:target]))  # web alt text is often cut mid-sentence like this
    return out
