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

With --two_step, two more files hold a harder task for the same base (bench/convergence.py's second task):
- two_step_train.jsonl, two_step_test.jsonl: two changes in a row ("Tom has 7 apples. How many after getting 5
  more, then losing 3?", answered "7 + 5 = 12. 12 - 3 = 9. The answer is 9."). Both changes of a test question
  are held-out pairs of the same seed, so the split is as strict as the first task's.

    python demo/quickstart_task.py --out_dir out/quickstart/data --seed 0
"""
import argparse
import json
import random
from pathlib import Path

from src.checkpoint.files import write_text_atomic

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


def split_pairs(rng, test_pair_fraction):
    """(train_pairs, test_pairs): the number pairs questions may use, and those only held-out questions use.
    It is the first draw from a seed's generator, so both tasks of one seed hold out the same pairs."""
    if not 0 < test_pair_fraction < 1:
        raise ValueError(f"test_pair_fraction must be in (0, 1), got {test_pair_fraction}")
    pairs = all_number_pairs()
    rng.shuffle(pairs)
    n_held = max(1, int(len(pairs) * test_pair_fraction))
    return pairs[n_held:], pairs[:n_held]


def check_counts(**counts):
    for name, value in counts.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def distinct_questions(rng, n, draw):
    """n questions from draw(rng), distinct while there are enough to go round."""
    questions, seen, attempts = [], set(), 0
    while len(questions) < n:
        q = draw(rng)
        attempts += 1
        if q["question"] in seen and attempts < 100 * n:
            continue
        seen.add(q["question"])
        questions.append(q)
    return questions


def test_record(q):
    return {"question": q["question"], "answer": f"{q['working']}\n#### {q['answer']}"}


def generate_task(seed=0, n_train=2000, n_test=200, n_pretrain=20000, test_pair_fraction=0.2):
    """(pretrain_texts, train_records, test_records) for a seed; the same seed gives the same lists."""
    check_counts(n_train=n_train, n_test=n_test, n_pretrain=n_pretrain)
    rng = random.Random(seed)
    train_pairs, test_pairs = split_pairs(rng, test_pair_fraction)
    pairs = test_pairs + train_pairs  # the shuffled order, which the draws below depend on
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

    test = distinct_questions(rng, n_test, lambda r: make_question(r, *r.choice(test_pairs)))
    return pretrain, train, [test_record(q) for q in test]


def two_step_chains(pairs):
    """Every (first, second) pair of pairs where the second change starts from the first one's result."""
    by_start = {}
    for pair in pairs:
        by_start.setdefault(pair[1], []).append(pair)
    return [(first, second) for first in pairs for second in by_start.get(result_of(*first), [])]


def make_two_step_question(rng, first, second):
    """A word problem of two changes in a row, first = (op, a, b) and second = (op, a op b, c), worked in two
    equations. Harder than make_question: the first change is a clause away from the answer, and the second
    equation starts from a number the model wrote itself."""
    (op1, a, b), (op2, middle, c) = first, second
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    gerund1, _ = rng.choice(ADD_VERBS if op1 == "+" else SUB_VERBS)
    gerund2, _ = rng.choice(ADD_VERBS if op2 == "+" else SUB_VERBS)
    more1, more2 = (" more" if op == "+" else "" for op in (op1, op2))
    answer = result_of(op2, middle, c)
    question = f"{name} has {a} {obj}. How many after {gerund1} {b}{more1}, then {gerund2} {c}{more2}?"
    working = f"{a} {op1} {b} = {middle}. {middle} {op2} {c} = {answer}."
    return {"question": question, "working": working, "answer": answer,
            "response": f"{working} The answer is {answer}."}


def generate_two_step_task(seed=0, n_train=2000, n_test=200, test_pair_fraction=0.2):
    """(train_records, test_records) of the two-step task for a seed: the harder sibling of generate_task's
    questions, for the same base (whose pretraining text has single sums only). Held out as strictly: both
    changes of a test question are held-out pairs of generate_task(seed), so no training question and no worked
    question of the pretraining text uses either of them."""
    check_counts(n_train=n_train, n_test=n_test)
    rng = random.Random(seed)
    train_pairs, test_pairs = split_pairs(rng, test_pair_fraction)
    train_chains, test_chains = two_step_chains(train_pairs), two_step_chains(test_pairs)
    if not test_chains:
        raise ValueError(f"no two held-out pairs chain at test_pair_fraction {test_pair_fraction}; raise it")
    train = [make_two_step_question(rng, *rng.choice(train_chains)) for _ in range(n_train)]
    test = distinct_questions(rng, n_test, lambda r: make_two_step_question(r, *r.choice(test_chains)))
    return [{"query": q["question"], "response": q["response"]} for q in train], [test_record(q) for q in test]


def write_jsonl(path, records):
    """Atomically: a sweep rewrites its task files while earlier runs' data must never be seen half-written."""
    return write_text_atomic("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), path)


def write_task(out_dir, seed=0, n_train=2000, n_test=200, n_pretrain=20000):
    """Write pretrain.jsonl, train.jsonl and test.jsonl into out_dir; return their paths by name."""
    pretrain, train, test = generate_task(seed=seed, n_train=n_train, n_test=n_test, n_pretrain=n_pretrain)
    out_dir = Path(out_dir)
    return {
        "pretrain": write_jsonl(out_dir / "pretrain.jsonl", pretrain),
        "train": write_jsonl(out_dir / "train.jsonl", train),
        "test": write_jsonl(out_dir / "test.jsonl", test),
    }


def write_two_step_task(out_dir, seed=0, n_train=2000, n_test=200):
    """Write two_step_train.jsonl and two_step_test.jsonl into out_dir; return their paths by name."""
    train, test = generate_two_step_task(seed=seed, n_train=n_train, n_test=n_test)
    out_dir = Path(out_dir)
    return {"train": write_jsonl(out_dir / "two_step_train.jsonl", train),
            "test": write_jsonl(out_dir / "two_step_test.jsonl", test)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="folder for pretrain.jsonl, train.jsonl, test.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_train", type=int, default=2000, help="fine-tuning questions (sft jsonl)")
    parser.add_argument("--n_test", type=int, default=200, help="held-out questions (GSM8K format)")
    parser.add_argument("--n_pretrain", type=int, default=20000, help="pretraining documents ({'text'} jsonl)")
    parser.add_argument("--two_step", action="store_true",
                        help="also write the two-step task (two_step_train.jsonl, two_step_test.jsonl)")
    args = parser.parse_args(argv)
    paths = write_task(args.out_dir, args.seed, args.n_train, args.n_test, args.n_pretrain)
    if args.two_step:
        paths.update({f"two_step_{name}": path for name, path in
                      write_two_step_task(args.out_dir, args.seed, args.n_train, args.n_test).items()})
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
