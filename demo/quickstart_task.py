"""The offline quickstart's task: small arithmetic word problems whose answers can be checked exactly.

Three files come out of one seed, always the same for the same seed:
- pretrain.jsonl  {"text"}: stories, arithmetic facts and worked questions in running prose ("Tom had 7 apples
  and got 5 more, so Tom had 12 apples.", "7 + 5 = 12.", "Tom has 7 apples. How many after getting 5 more?
  7 + 5 = 12. The answer is 12."), as web text holds. A base model trained on it knows
  the words, the sums and how such questions are worked, but has never seen the "User: ... Assistant: ..."
  chat format, nor learned to stop after one answer.
- train.jsonl     {"query", "response"}: the same kind of questions in the chat format, answered in MetaMathQA's
  style ("7 + 5 = 12. The answer is 12."): the fine-tuning data.
- test.jsonl      {"question", "answer"}: held-out questions in GSM8K's format ("... #### 12"), scored by
  `python -m src.eval.math --format gsm8k`.

Held out means: the test questions use number pairs (operation, a, b) that no training question and no worked
question of the pretraining text uses. Those sums do occur in the pretraining text as facts and stories, so a
fine-tuned model answers them by combining the base's arithmetic with the question format it learned, not by
recalling an answer it saw.

    python demo/quickstart_task.py --out_dir out/quickstart/data --seed 0
"""
import argparse
import json
import random
from pathlib import Path

NAMES = [
    "Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Max", "Emma", "Leo", "Zoe", "Jack", "Nina", "Omar", "Ruth",
    "Ivan", "Kate", "Paul", "Sara", "Hugo", "Lucy",
]
OBJECTS = [
    "apples", "pencils", "stickers", "marbles", "books", "cookies", "coins", "shells", "cards", "eggs",
    "flowers", "stamps", "candies", "balls", "cups", "hats",
]
# Each operation: how a question asks it (gerund), how a story tells it (past tense).
ADD_VERBS = [("getting", "got"), ("finding", "found"), ("buying", "bought")]
SUB_VERBS = [("giving away", "gave away"), ("losing", "lost"), ("selling", "sold")]

MIN_START, MAX_START = 2, 19  # the first number
MIN_CHANGE, MAX_CHANGE = 1, 9  # the second number


def all_number_pairs():
    """Every (op, a, b) the task uses: additions a + b, subtractions a - b with a non-negative result."""
    pairs = []
    for a in range(MIN_START, MAX_START + 1):
        for b in range(MIN_CHANGE, MAX_CHANGE + 1):
            pairs.append(("+", a, b))
            if b <= a:
                pairs.append(("-", a, b))
    return pairs


def result_of(op, a, b):
    return a + b if op == "+" else a - b


def make_question(rng, op, a, b):
    """One word problem as a dict with the question, the worked response and the numeric answer."""
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    gerund, _ = rng.choice(ADD_VERBS if op == "+" else SUB_VERBS)
    more = " more" if op == "+" else ""
    answer = result_of(op, a, b)
    # The changing number comes last, right before the answer restates both: a byte-level model this small
    # carries a number across a few words reliably, across a whole sentence not.
    question = f"{name} has {a} {obj}. How many after {gerund} {b}{more}?"
    working = f"{a} {op} {b} = {answer}."
    return {"question": question, "working": working, "answer": answer,
            "response": f"{working} The answer is {answer}."}


def make_story(rng, op, a, b, worked_question=True):
    """One narrative sentence, arithmetic fact or (when worked_question) worked question about (op, a, b)."""
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    _, past = rng.choice(ADD_VERBS if op == "+" else SUB_VERBS)
    more = " more" if op == "+" else ""
    c = result_of(op, a, b)
    word = "plus" if op == "+" else "minus"
    forms = [
        f"{name} had {a} {obj} and {past} {b}{more}, so {name} had {c} {obj}.",
        f"After {name} {past} {b}{more} {obj}, the {a} {obj} became {c} {obj}.",
        f"{a} {op} {b} = {c}.",
        f"{a} {word} {b} is {c}.",
        f"{name} had {a} {op} {b} = {c} {obj}.",
    ]
    if worked_question and rng.random() < 0.5:
        worked = make_question(rng, op, a, b)
        return f"{worked['question']} {worked['response']}"
    return rng.choice(forms)


def generate_task(seed=0, n_train=2000, n_test=200, n_pretrain=20000, test_pair_fraction=0.2):
    """(pretrain_texts, train_records, test_records) for a seed; the same seed gives the same lists."""
    if not 0 < test_pair_fraction < 1:
        raise ValueError(f"test_pair_fraction must be in (0, 1), got {test_pair_fraction}")
    for name, value in (("n_train", n_train), ("n_test", n_test), ("n_pretrain", n_pretrain)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    rng = random.Random(seed)
    pairs = all_number_pairs()
    rng.shuffle(pairs)
    n_held = max(1, int(len(pairs) * test_pair_fraction))
    test_pairs, train_pairs = pairs[:n_held], pairs[n_held:]
    held_out = set(test_pairs)

    # Each pretraining document packs a few stories, so every context window sees several sums.
    pretrain = []
    for _ in range(n_pretrain):
        sentences = []
        for _ in range(rng.randint(2, 4)):
            pair = rng.choice(pairs)
            sentences.append(make_story(rng, *pair, worked_question=pair not in held_out))
        pretrain.append({"text": " ".join(sentences)})

    train = []
    for _ in range(n_train):
        q = make_question(rng, *rng.choice(train_pairs))
        train.append({"query": q["question"], "response": q["response"]})

    test, seen = [], set()
    attempts = 0
    while len(test) < n_test:
        q = make_question(rng, *rng.choice(test_pairs))
        attempts += 1
        if q["question"] in seen and attempts < 100 * n_test:
            continue  # distinct test questions while there are enough to go round
        seen.add(q["question"])
        test.append({"question": q["question"], "answer": f"{q['working']}\n#### {q['answer']}"})
    return pretrain, train, test


def write_jsonl(path, records):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_task(out_dir, seed=0, n_train=2000, n_test=200, n_pretrain=20000):
    """Write pretrain.jsonl, train.jsonl and test.jsonl into out_dir; return their paths by name."""
    pretrain, train, test = generate_task(seed=seed, n_train=n_train, n_test=n_test, n_pretrain=n_pretrain)
    out_dir = Path(out_dir)
    return {
        "pretrain": write_jsonl(out_dir / "pretrain.jsonl", pretrain),
        "train": write_jsonl(out_dir / "train.jsonl", train),
        "test": write_jsonl(out_dir / "test.jsonl", test),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="folder for pretrain.jsonl, train.jsonl, test.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_train", type=int, default=2000, help="fine-tuning questions (sft jsonl)")
    parser.add_argument("--n_test", type=int, default=200, help="held-out questions (GSM8K format)")
    parser.add_argument("--n_pretrain", type=int, default=20000, help="pretraining documents ({'text'} jsonl)")
    args = parser.parse_args(argv)
    paths = write_task(args.out_dir, args.seed, args.n_train, args.n_test, args.n_pretrain)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
