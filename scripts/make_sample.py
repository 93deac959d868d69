"""Write assets/sample/reviews.csv: 210 short made-up product reviews for trying an upload.

Generated from the templates below (no third-party text, so no licence question), three
balanced labels, every text distinct. Columns: text,label.

    python scripts/make_sample.py
"""
import csv
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "assets" / "sample" / "reviews.csv"
PRODUCTS = ["kettle", "backpack", "desk lamp", "phone case", "rain jacket", "coffee grinder",
            "keyboard", "water bottle", "pair of headphones", "bike light", "notebook",
            "frying pan", "umbrella", "alarm clock"]
OPENERS = ["The {p}", "This {p}", "My new {p}", "The {p} I ordered"]
SAY = {
    "positive": ["works perfectly", "is excellent value", "exceeded what I hoped for",
                 "feels solid and well made", "is a joy to use every day",
                 "arrived early and works great"],
    "negative": ["broke after a week", "is a waste of money", "stopped working quickly",
                 "feels cheap and flimsy", "was a real disappointment",
                 "arrived damaged and useless"],
    "neutral": ["does what the label says", "is about what I expected",
                "is fine, nothing special", "works, but so does any other",
                "is average for the price", "is okay for occasional use"],
}
TAILS = {
    "positive": ["", " Would buy again.", " Highly recommended!", " Very happy with it."],
    "negative": ["", " Would not buy again.", " Avoid it.", " I want a refund."],
    "neutral": ["", " No strong feelings.", " It is just okay.", " Neither good nor bad."],
}

if __name__ == "__main__":
    rng = random.Random(0)
    rows = []
    for label in SAY:
        pool = [f"{o.format(p=p)} {s}.{t}" for p in PRODUCTS for o in OPENERS
                for s in SAY[label] for t in TAILS[label]]
        rows += [(text, label) for text in rng.sample(pool, 70)]
    rng.shuffle(rows)
    assert len({t.lower() for t, _ in rows}) == len(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    print(OUT, len(rows), "rows")
