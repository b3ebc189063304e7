"""Answer extraction and comparison (src/eval/answers.py) on hand-written GSM8K and MATH cases.

Every expected value below was worked out by hand from MetaMath's rules (see the module docstring), traps
included: thousands commas, signs, "3.50" vs "3.5", "The answer is: 42.", fractions, \\dfrac, \\left( \\right),
nested braces in \\boxed, 0.5 vs \\frac{1}{2} (equal in the MATH script, the one decimal it rewrites), and no
answer at all (None, counted wrong).
"""
import pytest

from src.eval.answers import (
    answers_equal,
    extract_gsm8k_prediction,
    extract_gsm8k_reference,
    extract_math_prediction,
    extract_math_reference,
    extract_prediction,
    extract_reference,
    last_boxed,
    normalize_math_answer,
)
from src.eval.math import wilson_interval

# ------------------------------------------------------------------------------------------------- GSM8K
GSM8K_REFERENCES = [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
    ("...\n#### 1,234", "1234"),
    ("...\n#### -5", "-5"),
    ("...\n#### 3.50", "3.5"),
    ("step 1\n#### 12\nThe answer is: 12", "12"),
    ("no marker, 7 apples", None),
    ("#### none", None),
]


@pytest.mark.parametrize("solution, expected", GSM8K_REFERENCES)
def test_gsm8k_reference(solution, expected):
    assert extract_gsm8k_reference(solution) == expected


GSM8K_PREDICTIONS = [
    ("He has 3 + 4 = 7 apples.\nThe answer is: 7", "7"),
    ("The answer is: 42.", "42"),
    ("The answer is 1,234.", "1234"),
    ("The answer is: 1,234,567", "1234567"),
    ("The answer is: $1,234.50.", "1234.5"),
    ("The answer is: -3", "-3"),
    ("the answer is 5 dollars, not 6", "5"),
    ("First 10 then 20.\nThe answer is: 30\nUser: next question 99", "30"),  # after the sentence: first number
    ("The answer is 2.\nThe answer is 4.", "4"),  # the last sentence counts
    ("She pays 12 dollars and gets 3 back, so 9.", "9"),  # no sentence: last number
    ("The temperature dropped to \u22124 degrees", "-4"),  # Unicode minus
    ("from 2023-2020 = 3 years", "3"),
    ("years 2023-2020", "2020"),  # a minus between numbers is not a sign
    ("The answer is: 3/4", "3/4"),
    ("The answer is: 5.0", "5"),
    ("The answer is: 0.50", "0.5"),
    ("The answer is:", None),
    ("I do not know.", None),
    ("", None),
]


@pytest.mark.parametrize("generated, expected", GSM8K_PREDICTIONS)
def test_gsm8k_prediction(generated, expected):
    assert extract_gsm8k_prediction(generated) == expected


GSM8K_COMPARISONS = [
    ("The answer is: 1,234", "#### 1234", True),
    ("The answer is: 1234", "#### 1,234", True),
    ("The answer is: 3.50", "#### 3.5", True),
    ("The answer is: 3.5", "#### 3.50", True),
    ("The answer is: 18.00", "#### 18", True),
    ("The answer is: 42.", "#### 42", True),
    ("The answer is: $42", "#### 42", True),
    ("The answer is: -5", "#### -5", True),
    ("The answer is: 5", "#### -5", False),
    ("The answer is: 7/2", "#### 3.5", True),
    ("The answer is: 0.333333", "#### 1/3", True),  # within the 1e-6 absolute tolerance
    ("The answer is: 0.33", "#### 1/3", False),
    ("The answer is: 7.6", "#### 8", False),  # no rounding to integers
    ("The answer is: 123", "#### 1234", False),
    ("The answer is: 10000001", "#### 10000000", False),  # large integers must match exactly
    ("no number at all", "#### 0", False),
    ("The answer is: 0", "no reference marker", False),
]


@pytest.mark.parametrize("generated, solution, correct", GSM8K_COMPARISONS)
def test_gsm8k_correct(generated, solution, correct):
    prediction = extract_prediction("gsm8k", generated)
    reference = extract_reference("gsm8k", solution)
    assert answers_equal("gsm8k", prediction, reference) is correct


# -------------------------------------------------------------------------------------------------- MATH
BOXED = [
    (r"so the answer is $\boxed{5}$.", "5"),
    (r"first $\boxed{1}$, then $\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
    (r"$\boxed{\left( 3, \frac{\pi}{2} \right)}$", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"$\boxed{\begin{pmatrix} 1 \\ {2} \end{pmatrix}}$", r"\begin{pmatrix} 1 \\ {2} \end{pmatrix}"),
    (r"\fbox{x^{2}+1}", "x^{2}+1"),
    (r"the total is $\boxed 7$", "7"),
    (r"never closed \boxed{\frac{1}{2}", None),
    ("no box here", None),
]


@pytest.mark.parametrize("text, expected", BOXED)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected
    assert extract_math_reference(text) == expected


MATH_PREDICTIONS = [
    ("We get x=2.\nThe answer is: 2", "2"),
    (r"The answer is: \frac{1}{2}.", r"\frac{1}{2}"),
    ("The answer is: 3.5.\nUser: more", "3.5"),  # cut at ".\n", the decimal point stays
    ("The answer is 12\n\nExtra text", "12"),
    (r"The answer is: $\boxed{5}$.", "5"),  # wrappers around the whole answer are removed
    (r"The answer is: (1,2)", "(1,2)"),
    (r"So $x = \boxed{-3}$ and we are done", "-3"),  # no sentence: last boxed
    ("The answer is:   ", None),
    ("I cannot solve this", None),
]


@pytest.mark.parametrize("generated, expected", MATH_PREDICTIONS)
def test_math_prediction(generated, expected):
    assert extract_math_prediction(generated) == expected


NORMALISED = [
    (r"\dfrac{3}{4}", r"\frac{3}{4}"),
    (r"\tfrac12", r"\frac{1}{2}"),
    (r"\frac1{72}", r"\frac{1}{72}"),
    (r"\frac{1}2", r"\frac{1}{2}"),
    (r"\left( 1, 2 \right)", "(1,2)"),
    (r"90^\circ", "90"),
    (r"90^{\circ}", "90"),
    (r"\$18.90", "18.90"),
    (r"5\text{ cm}", "5"),
    (r"12\mbox{ inches}", "12"),
    (r"\text{(A)}", r"\text{(A)}"),  # no space after the brace: not a unit
    (r"25\%", "25"),
    ("25%", "25%"),  # a bare percent stays, as in the MATH script
    (".5", r"\frac{1}{2}"),  # "0.5" first, then the special case
    ("0.5", r"\frac{1}{2}"),
    ("0.25", "0.25"),
    (r"x = 5", "5"),
    ("k=-3", "-3"),
    ("xy = 5", "xy=5"),  # three characters before "=": kept
    (r"\sqrt2", r"\sqrt{2}"),
    (r"2\sqrt 3", r"2\sqrt{3}"),
    ("3/4", r"\frac{3}{4}"),
    ("-3/4", "-3/4"),  # not two plain integers
    (r"\{1,2\}", r"\{1,2\}"),
    ("a\\!b", "ab"),
    ("1\n2", "12"),
]


@pytest.mark.parametrize("answer, expected", NORMALISED)
def test_normalize_math_answer(answer, expected):
    assert normalize_math_answer(answer) == expected


MATH_COMPARISONS = [
    (r"The answer is: \frac{1}{2}", r"$\boxed{\frac{1}{2}}$", True),
    ("The answer is: 0.5", r"$\boxed{\frac{1}{2}}$", True),  # the MATH script's special case
    ("The answer is: 0.5", r"$\boxed{\dfrac{1}{2}}$", True),
    ("The answer is: 0.25", r"$\boxed{\frac{1}{4}}$", False),  # no other decimal is rewritten
    ("The answer is: 1/2", r"$\boxed{\frac12}$", True),
    (r"The answer is: \dfrac{3}{4}.", r"$\boxed{\frac{3}{4}}$", True),
    (r"The answer is: (3, \frac{\pi}{2})", r"$\boxed{\left( 3, \frac{\pi}{2} \right)}$", True),
    (r"The answer is: x^{2}+1", r"$\boxed{x^{2} + 1}$", True),
    (r"The answer is: 5\text{ cm}.", r"$\boxed{5}$", True),
    ("The answer is: 2.0", r"$\boxed{2}$", False),  # string comparison: no numeric equivalence in MATH
    ("The answer is: 1,000", r"$\boxed{1000}$", False),
    (r"The answer is: \sqrt{3}", r"$\boxed{\sqrt3}$", True),
    ("The answer is: 5", r"$\boxed{-5}$", False),
    ("nothing useful", r"$\boxed{5}$", False),
    ("The answer is: 5", "a solution without a box", False),
]


@pytest.mark.parametrize("generated, solution, correct", MATH_COMPARISONS)
def test_math_correct(generated, solution, correct):
    prediction = extract_prediction("math", generated)
    reference = extract_reference("math", solution)
    assert answers_equal("math", prediction, reference) is correct


def test_none_is_never_correct():
    for answer_format in ("gsm8k", "math"):
        assert answers_equal(answer_format, None, None) is False
        assert answers_equal(answer_format, None, "5") is False
        assert answers_equal(answer_format, "5", None) is False


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="gsm8k, math"):
        extract_prediction("aqua", "The answer is: 5")


# ------------------------------------------------------------------------------- the accuracy's interval
@pytest.mark.parametrize("successes, total", [(9, 20), (0, 10), (10, 10), (1, 3), (700, 1319)])
def test_wilson_interval_solves_its_defining_equation(successes, total):
    # Wilson's bounds are the proportions p with |p_hat - p| = z * sqrt(p (1 - p) / n): check each bound
    # against that equation rather than against a second copy of the closed form
    z = 1.959963984540054
    low, high = wilson_interval(successes, total)
    p_hat = successes / total
    for bound in (low, high):
        assert (p_hat - bound) ** 2 == pytest.approx(z * z * bound * (1 - bound) / total, abs=1e-12)
    assert 0 <= low <= p_hat <= high <= 1
    assert (low == 0) == (successes == 0) and (high == 1) == (successes == total)


def test_wilson_interval_refuses_empty():
    with pytest.raises(ValueError, match="total > 0"):
        wilson_interval(0, 0)
