"""Write the real-task recipe's small data files (original items, written by this project).

Three domains in the three shapes researchers' data come in, so the recipe
exercises every reader and verifier of the framework:

* ``math`` -- word problems with worked (chain-of-thought) references ending in
  ``#### <answer>``, GSM8K's convention, as **Parquet** with the fields
  ``question`` / ``solution`` (``data.fields`` maps them);
* ``qa`` -- four-option multiple-choice items as **chat ``messages``** JSONL
  (system + user turn; the reference letter in ``answer``);
* ``code`` -- small Python functions to write, each with its ``tests`` (a list
  of ``assert`` lines), as a **``datasets`` folder** (``save_to_disk``).

Deterministic: ``python configs/recipes/make_data.py`` rewrites the same files.
Train and eval items are disjoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data"
NAMES = ["Ada", "Bilal", "Chen", "Dara", "Emeka", "Freya", "Goran", "Hana", "Ines", "Jonas", "Kemal", "Lior"]
ITEMS = ["apples", "stamps", "marbles", "pencils", "shells", "stickers"]


def math_items(rng: random.Random, n: int) -> list[dict[str, str]]:
    """Two-step word problems (buy / give away / share) with a worked solution."""
    out = []
    for i in range(n):
        name, other, item = rng.choice(NAMES), rng.choice(NAMES), rng.choice(ITEMS)
        kind = i % 3
        if kind == 0:
            a, b, c = rng.randint(5, 40), rng.randint(2, 9), rng.randint(1, 4)
            q = f"{name} has {a} {item}. {name} buys {b} packs with {c} {item} in each. How many {item} does {name} have now?"
            ans = a + b * c
            sol = f"{b} packs of {c} is {b} * {c} = {b * c} {item}. {a} + {b * c} = {ans}.\n#### {ans}"
        elif kind == 1:
            a, b = rng.randint(20, 90), rng.randint(2, 15)
            c = rng.randint(1, a - b - 1)
            q = f"{name} had {a} {item}, gave {b} to {other} and lost {c}. How many {item} are left?"
            ans = a - b - c
            sol = f"After giving {b} away: {a} - {b} = {a - b}. After losing {c}: {a - b} - {c} = {ans}.\n#### {ans}"
        else:
            k, per = rng.randint(2, 6), rng.randint(3, 12)
            total = k * per
            q = f"{name} shares {total} {item} equally among {k} friends. How many {item} does each friend get?"
            ans = per
            sol = f"Each friend gets {total} / {k} = {ans} {item}.\n#### {ans}"
        out.append({"question": q, "solution": sol})
    return out


QA = [  # (question, options A-D, right letter) -- general-knowledge items written for this recipe
    ("Which gas do plants take in for photosynthesis?", ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"], "B"),
    ("How many sides does a hexagon have?", ["Five", "Seven", "Six", "Eight"], "C"),
    ("Which organ pumps blood through the body?", ["Heart", "Liver", "Lung", "Kidney"], "A"),
    ("What is the boiling point of water at sea level in Celsius?", ["90", "80", "120", "100"], "D"),
    ("Which planet is closest to the Sun?", ["Venus", "Mercury", "Mars", "Earth"], "B"),
    ("Which of these is a prime number?", ["21", "27", "29", "33"], "C"),
    ("What do bees collect from flowers to make honey?", ["Nectar", "Sap", "Seeds", "Bark"], "A"),
    ("Which unit measures electrical resistance?", ["Volt", "Ampere", "Watt", "Ohm"], "D"),
    ("Which vitamin does skin make in sunlight?", ["Vitamin C", "Vitamin D", "Vitamin K", "Vitamin B12"], "B"),
    ("How many minutes are in two hours?", ["100", "140", "120", "90"], "C"),
    ("Which instrument measures air pressure?", ["Barometer", "Thermometer", "Odometer", "Ammeter"], "A"),
    ("What is the largest ocean on Earth?", ["Atlantic", "Indian", "Arctic", "Pacific"], "D"),
    ("Which blood cells carry oxygen?", ["White cells", "Red cells", "Platelets", "Plasma"], "B"),
    ("What is 15 percent of 200?", ["15", "20", "30", "35"], "C"),
    ("Which metal is liquid at room temperature?", ["Mercury", "Iron", "Copper", "Zinc"], "A"),
    ("Which layer of the atmosphere holds the ozone layer?", ["Troposphere", "Mesosphere", "Thermosphere", "Stratosphere"], "D"),
    ("What is the chemical symbol of sodium?", ["So", "Na", "Sd", "N"], "B"),
    ("How many bones are in an adult human body?", ["186", "226", "206", "256"], "C"),
    ("Which force keeps planets in orbit around the Sun?", ["Gravity", "Magnetism", "Friction", "Tension"], "A"),
    ("What is the square root of 81?", ["7", "8", "10", "9"], "D"),
    ("Which part of a cell holds its DNA?", ["Membrane", "Nucleus", "Ribosome", "Vacuole"], "B"),
    ("Which continent is the Sahara desert on?", ["Asia", "Australia", "Africa", "Europe"], "C"),
    ("What is frozen water called?", ["Ice", "Steam", "Dew", "Fog"], "A"),
    ("Which number is even?", ["13", "15", "17", "18"], "D"),
]
QA_SYSTEM = "You are a careful medical and science tutor. Think briefly, then finish with 'Answer: <letter>'."

CODE = [  # (task, function name, tests) -- small functions written for this recipe
    ("Write a Python function add(a, b) that returns the sum of a and b.", ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]),
    ("Write a Python function square(x) that returns x squared.", ["assert square(3) == 9", "assert square(-4) == 16"]),
    ("Write a Python function is_even(n) that returns True when n is even.", ["assert is_even(4) is True", "assert is_even(7) is False"]),
    ("Write a Python function reverse(s) that returns the string s reversed.", ["assert reverse('abc') == 'cba'", "assert reverse('') == ''"]),
    ("Write a Python function maximum(xs) that returns the largest number in the list xs.", ["assert maximum([1, 5, 2]) == 5", "assert maximum([-3, -1]) == -1"]),
    ("Write a Python function count_vowels(s) that counts the vowels a, e, i, o, u in s.", ["assert count_vowels('banana') == 3", "assert count_vowels('xyz') == 0"]),
    ("Write a Python function factorial(n) that returns n factorial.", ["assert factorial(0) == 1", "assert factorial(5) == 120"]),
    ("Write a Python function first(xs) that returns the first element of the list xs.", ["assert first([7, 8]) == 7", "assert first(['a']) == 'a'"]),
    ("Write a Python function double(x) that returns two times x.", ["assert double(4) == 8", "assert double(0) == 0"]),
    ("Write a Python function total(xs) that returns the sum of the list xs.", ["assert total([1, 2, 3]) == 6", "assert total([]) == 0"]),
    ("Write a Python function length(s) that returns the number of characters in s.", ["assert length('abcd') == 4", "assert length('') == 0"]),
    ("Write a Python function absolute(x) that returns the absolute value of x.", ["assert absolute(-3) == 3", "assert absolute(2) == 2"]),
    ("Write a Python function upper(s) that returns s in upper case.", ["assert upper('ab') == 'AB'", "assert upper('Q') == 'Q'"]),
    ("Write a Python function last(xs) that returns the last element of the list xs.", ["assert last([1, 2, 9]) == 9", "assert last(['z']) == 'z'"]),
    ("Write a Python function minimum(xs) that returns the smallest number in the list xs.", ["assert minimum([4, 2, 8]) == 2", "assert minimum([0]) == 0"]),
    ("Write a Python function is_positive(x) that returns True when x is greater than zero.", ["assert is_positive(3) is True", "assert is_positive(-2) is False"]),
]


def write() -> None:
    import datasets

    rng = random.Random(38)
    OUT.mkdir(parents=True, exist_ok=True)
    math_rows = math_items(rng, 48)
    for split, rows in (("train", math_rows[:36]), ("eval", math_rows[36:])):
        datasets.Dataset.from_list(rows).to_parquet(str(OUT / f"math_{split}.parquet"))
    qa_rows = [{"messages": [{"role": "system", "content": QA_SYSTEM},
                             {"role": "user", "content": q + "\n" + "\n".join(f"{l}. {o}" for l, o in zip("ABCD", opts))}],
                "answer": right} for q, opts, right in QA]
    for split, rows in (("train", qa_rows[:16]), ("eval", qa_rows[16:])):
        (OUT / f"qa_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code_rows = [{"task": t, "tests": tests} for t, tests in CODE]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(code_rows[:10]), "eval": datasets.Dataset.from_list(code_rows[10:])}).save_to_disk(str(OUT / "code"))


if __name__ == "__main__":
    write()
    print(f"wrote {sorted(p.name for p in OUT.iterdir())}")
