"""The quickstart's tasks read back from their files: answers checked by parsing the numbers out of the text
and redoing the arithmetic, and the held-out split checked against every question and worked example the
base or the fine-tune sees."""
import json
import re

import pytest

from demo.quickstart_task import main as task_main

EQUATION = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")
QUESTION_ONE = re.compile(r"has (\d+) \w+\. How many after [\w ]+? (\d+)( more)?\?$")
QUESTION_TWO = re.compile(r"has (\d+) \w+\. How many after [\w ]+? (\d+)( more)?, then [\w ]+? (\d+)( more)?\?$")
WORKED = re.compile(r"How many after [\w ]+? \d+(?: more)?\? ((?:\d+ [+-] \d+ = \d+\. )+)The answer is")


def equations(text):
    """(a, op, b, c) of every 'a op b = c.' in text, the arithmetic checked."""
    found = []
    for a, op, b, c in EQUATION.findall(text):
        a, b, c = int(a), int(b), int(c)
        assert c == (a + b if op == "+" else a - b), text
        found.append((op, a, b))
    return found


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = tmp_path_factory.mktemp("task")
    task_main(["--out_dir", str(out), "--seed", "3", "--n_pretrain", "3000", "--n_train", "800", "--n_test", "150",
               "--two_step"])
    return {name: [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
            for name in ("pretrain", "train", "test", "two_step_train", "two_step_test")}


def test_two_step_questions_are_worked_in_two_chained_equations(task):
    for record in task["two_step_train"]:
        a, b, more_b, c, more_c = QUESTION_TWO.search(record["query"]).groups()
        (op1, a1, b1), (op2, middle, c1) = equations(record["response"])
        assert (a1, b1, c1) == (int(a), int(b), int(c))
        assert (op1 == "+") == bool(more_b) and (op2 == "+") == bool(more_c)
        assert middle == (a1 + b1 if op1 == "+" else a1 - b1)
        answer = middle + c1 if op2 == "+" else middle - c1
        assert record["response"].endswith(f"The answer is {answer}.")
    for record in task["two_step_test"]:
        working, final = record["answer"].split("\n#### ")
        assert len(equations(working)) == 2 and working.endswith(f"= {final}.")
    assert len({r["question"] for r in task["two_step_test"]}) == len(task["two_step_test"])


def test_two_step_test_pairs_are_seen_nowhere_in_training(task):
    test_pairs = {pair for r in task["two_step_test"] for pair in equations(r["answer"])}
    seen = set()
    for r in task["train"] + task["two_step_train"]:
        seen.update(equations(r["response"]))
    for doc in task["pretrain"]:
        for worked in WORKED.findall(doc["text"]):
            seen.update(equations(worked))
    assert test_pairs and not test_pairs & seen
    # The same pairs are held out of the one-step task: the two tasks share the base's split.
    one_step_test = set()
    for r in task["test"]:
        one_step_test.update(equations(r["answer"]))
    assert not one_step_test & seen
    # ...and the facts the base reads cover them: it was taught the sums, not the questions.
    facts = {pair for doc in task["pretrain"] for pair in equations(doc["text"])}
    assert len(test_pairs & facts) > 0.9 * len(test_pairs)


def test_one_step_questions_match_their_working(task):
    for record in task["train"]:
        a, b, more = QUESTION_ONE.search(record["query"]).groups()
        [(op, a1, b1)] = equations(record["response"])
        assert (a1, b1) == (int(a), int(b)) and (op == "+") == bool(more)
