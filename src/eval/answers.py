"""Answer extraction and comparison for GSM8K and MATH, following MetaMath's evaluation scripts.

Every extractor returns None when it finds no answer; a None prediction is always counted wrong.

GSM8K
-----
- Reference: the text after the last "####" of the solution, read as a number (commas and "$" dropped).
- Prediction: the first number after the last "The answer is" (MetaMathQA's closing sentence; a following
  ":" is optional, the match ignores case); without that sentence, the last number anywhere in the text.
- A number is an optionally signed integer or decimal, with thousands commas ("1,234,567") or without, or a
  simple fraction "a/b"; "$", thousands commas, a trailing period ("42.") and trailing zeros after the
  decimal point ("3.50" -> "3.5", "5.0" -> "5") are not part of it. A sign counts only when it does not follow
  a letter, digit or ")" (so "2023-2020" reads as 2023 and 2020, not -2020). The Unicode minus is read as "-".
- Comparison: numerically, |prediction - reference| <= 1e-6, in exact rational arithmetic: "3.50" == "3.5" ==
  "7/2", and the absolute tolerance only admits a repeating decimal written to 6+ places ("0.333333" for 1/3)
  while large integers still have to match exactly (a relative tolerance would let 10000001 pass for 10^7).
  MetaMath's script instead rounds the prediction to the nearest integer (7.6 would count for 8); we do not.

MATH
----
- Reference: the contents of the last `\\boxed{...}` or `\\fbox{...}` of the solution (braces balanced, so
  nested braces are kept whole), or of the `\\boxed 5` form (up to the next space or "$").
- Prediction: the text after the last "The answer is" (optional ":"), cut at the first ".\\n" or blank line,
  stripped, one final "." removed -- as MetaMath's script does; without that sentence, the last boxed answer.
  Two formatting-only extensions to MetaMath's script: an answer that is entirely `\\boxed{X}` or `$X$` is
  unwrapped to X.
- Comparison: the two normalised strings are equal. Normalisation (`normalize_math_answer`) follows the
  MATH benchmark's `strip_string`, in this order:
    1. remove line breaks; remove `\\!`; `\\\\` -> `\\`;
    2. `tfrac`, `dfrac` -> `frac`;
    3. remove `\\left` and `\\right`;
    4. remove degrees `^{\\circ}` and `^\\circ`;
    5. remove escaped dollars `\\$`;
    6. units on the right: drop everything from the first `\\text{ ` or `\\mbox{ ` (brace then space, the
       MATH convention for units, e.g. `5\\text{ cm}` -> `5`);
    7. remove escaped percent signs `\\%` (a bare "%" stays, as in the MATH script);
    8. a leading zero for bare decimals: " ." -> " 0.", "{." -> "{0.", and ".5" -> "0.5" at the start;
    9. a short assignment is dropped: with exactly one "=", and at most 2 characters before it ("x = 5",
       "k=3"), only the right side is kept;
   10. `\\sqrt3` -> `\\sqrt{3}` (a one-character radicand gets its braces);
   11. remove all spaces;
   12. `\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`, and (beyond the MATH script)
       `\\frac{1}2` -> `\\frac{1}{2}`: one-character numerators and denominators get their braces;
   13. the whole answer "0.5" -> `\\frac{1}{2}` (the MATH script's one special case: so `\\boxed{\\frac{1}{2}}`
       and "0.5" ARE counted equal, while "0.25" and `\\frac{1}{4}` are not);
   14. a whole answer "a/b" of two plain integers -> `\\frac{a}{b}`.
  No symbolic or numeric equivalence beyond these string rewrites ("2" and "2.0" differ), as in MetaMath.
"""
import re
from fractions import Fraction
from typing import Optional

FORMATS = ("gsm8k", "math")
NUMERIC_TOLERANCE = 1e-6  # absolute

_ANSWER_SENTENCE = re.compile(r"the answer is\s*:?", re.IGNORECASE)
_UNSIGNED_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_NUMBER = re.compile(
    r"(?:(?<![\w)])[-+])?"  # a sign, unless it is a minus between two terms ("3-5", "x-5", "(2)-1")
    rf"(?:{_UNSIGNED_NUMBER})"
    rf"(?:/(?:{_UNSIGNED_NUMBER}))?"  # a simple fraction "a/b"
)


# --------------------------------------------------------------------------------------------------- numbers
def _clean_number_text(text: str) -> str:
    return text.strip().replace("\u2212", "-").replace("$", "").replace(",", "").rstrip(".").strip()


def parse_number(text: str) -> Optional[Fraction]:
    """The exact value of a number string ("1,234", "-3.50", "$7", "42.", "3/4"); None if it is not one."""
    numerator, slash, denominator = _clean_number_text(text).partition("/")
    try:
        value = Fraction(numerator)
        if slash:
            divisor = Fraction(denominator)
            if divisor == 0:
                return None
            value /= divisor
    except (ValueError, ZeroDivisionError):
        return None
    return value


def _canonical_decimal(text: str) -> str:
    """"+3.50" -> "3.5", "-0.0" -> "0", "007" -> "7", "-.5" -> "-0.5" (text already holds a valid decimal)."""
    sign = "-" if text.startswith("-") else ""
    digits = text.lstrip("+-")
    if "." in digits:
        digits = digits.rstrip("0").rstrip(".")
    digits = digits.lstrip("0")
    if not digits or digits == ".":
        return "0"
    return sign + ("0" + digits if digits.startswith(".") else digits)


def canonical_number(text: str) -> Optional[str]:
    """A number string in the form it is reported in: no "$", commas or trailing period; "3.50" -> "3.5",
    "5.0" -> "5", "+2" -> "2", "-0" -> "0"; a fraction keeps its "a/b" form. None if `text` is not a number."""
    if parse_number(text) is None:
        return None
    return "/".join(_canonical_decimal(part) for part in _clean_number_text(text).split("/"))


def _numbers_in(text: str) -> list:
    return [match.group(0) for match in _NUMBER.finditer(text.replace("\u2212", "-"))]


def extract_gsm8k_reference(solution: str) -> Optional[str]:
    """The canonical number after the last "####" of a GSM8K solution; None if there is none."""
    if "####" not in solution:
        return None
    numbers = _numbers_in(solution.rsplit("####", 1)[1])
    return canonical_number(numbers[0]) if numbers else None


def extract_gsm8k_prediction(text: str) -> Optional[str]:
    """The first number after the last "The answer is", else the last number of the text (canonical form)."""
    sentences = list(_ANSWER_SENTENCE.finditer(text))
    if sentences:
        numbers = _numbers_in(text[sentences[-1].end():])
        if numbers:
            return canonical_number(numbers[0])
    numbers = _numbers_in(text)
    return canonical_number(numbers[-1]) if numbers else None


def gsm8k_equal(prediction: Optional[str], reference: Optional[str]) -> bool:
    """Numerical equality within NUMERIC_TOLERANCE (absolute, exact arithmetic); None is never equal."""
    if prediction is None or reference is None:
        return False
    predicted, expected = parse_number(prediction), parse_number(reference)
    if predicted is None or expected is None:
        return False
    return abs(predicted - expected) <= Fraction(NUMERIC_TOLERANCE)


# ------------------------------------------------------------------------------------------------------ MATH
def _closing_brace(text: str, open_index: int) -> Optional[int]:
    """Index of the "}" matching the "{" at open_index, or None when the braces never balance."""
    depth = 0
    for index in range(open_index, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def last_boxed(text: str) -> Optional[str]:
    """Contents of the last `\\boxed{...}` / `\\fbox{...}` (nested braces kept), or of a trailing
    `\\boxed 5`; None if there is no box or the last one never closes."""
    starts = [match for match in re.finditer(r"\\(?:boxed|fbox)", text)]
    if not starts:
        return None
    last = starts[-1]
    rest = text[last.end():]
    if rest.startswith("{"):
        close = _closing_brace(text, last.end())
        return None if close is None else text[last.end() + 1:close]
    if rest.startswith(" "):
        content = rest.strip().split("$")[0].split()
        return content[0] if content else None
    return None


def extract_math_reference(solution: str) -> Optional[str]:
    """The last boxed answer of a MATH solution (raw, not normalised); None if there is none."""
    return last_boxed(solution)


def _unwrap(answer: str) -> str:
    """`\\boxed{X}` -> X and `$X$` -> X when the wrapper spans the whole answer."""
    answer = answer.strip()
    while True:
        if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
            answer = answer.strip("$").strip()
            continue
        match = re.match(r"\\(?:boxed|fbox)\{", answer)
        if match and _closing_brace(answer, match.end() - 1) == len(answer) - 1:
            answer = answer[match.end():-1].strip()
            continue
        return answer


def extract_math_prediction(text: str) -> Optional[str]:
    """Text after the last "The answer is" (up to ".\\n" or a blank line, final period removed), else the last
    boxed answer; None if neither gives a non-empty answer."""
    sentences = list(_ANSWER_SENTENCE.finditer(text))
    if sentences:
        answer = text[sentences[-1].end():]
        answer = re.split(r"\.\n|\n\s*\n", answer, maxsplit=1)[0].strip()
        if answer.endswith("."):
            answer = answer[:-1].strip()
        answer = _unwrap(answer)
        if answer:
            return answer
    boxed = last_boxed(text)
    if boxed is None:
        return None
    boxed = _unwrap(boxed)
    return boxed or None


def _brace_fraction_part(text: str, index: int):
    """(braced part, index after it) for the argument of \\frac starting at `index`: a {...} group is kept
    whole, a single character gets braces. None when nothing (or an unbalanced group) is there."""
    if index >= len(text):
        return None
    if text[index] == "{":
        close = _closing_brace(text, index)
        if close is None:
            return None
        return text[index:close + 1], close + 1
    if text[index] == "\\":  # a command such as \pi: leave the expression as written
        return None
    return "{" + text[index] + "}", index + 1


def _fix_fracs(text: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`, `\\frac{1}2` -> `\\frac{1}{2}`."""
    out, index = [], 0
    while True:
        found = text.find("\\frac", index)
        if found < 0:
            out.append(text[index:])
            return "".join(out)
        out.append(text[index:found] + "\\frac")
        index = found + len("\\frac")
        numerator = _brace_fraction_part(text, index)
        if numerator is None:
            continue
        denominator = _brace_fraction_part(text, numerator[1])
        if denominator is None:
            continue
        out.append(numerator[0] + denominator[0])
        index = denominator[1]


def _fix_sqrt(text: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}`: a radicand that is not a {...} group is its first character."""
    return re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", text)


def _fix_a_slash_b(text: str) -> str:
    """A whole answer "a/b" of two plain non-negative integers -> `\\frac{a}{b}`."""
    match = re.fullmatch(r"(0|[1-9]\d*)/(0|[1-9]\d*)", text)
    return f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}" if match else text


def _remove_right_units(text: str) -> str:
    """Drop a unit written as `\\text{ unit}` or `\\mbox{ unit}` (and whatever follows it)."""
    cut = min((i for i in (text.find("\\text{ "), text.find("\\mbox{ ")) if i >= 0), default=-1)
    return text[:cut] if cut >= 0 else text


def normalize_math_answer(answer: str) -> str:
    """The MATH `strip_string` normalisation of an answer string (the module docstring lists each step)."""
    text = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.replace("\\$", "")
    text = _remove_right_units(text)
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if text.startswith("."):
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = _fix_sqrt(text)
    text = text.replace(" ", "")
    text = _fix_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _fix_a_slash_b(text)


def math_equal(prediction: Optional[str], reference: Optional[str]) -> bool:
    """Equality of the normalised answers; None is never equal."""
    if prediction is None or reference is None:
        return False
    return normalize_math_answer(prediction) == normalize_math_answer(reference)


# -------------------------------------------------------------------------------------------- by format name
def _check_format(answer_format: str) -> None:
    if answer_format not in FORMATS:
        raise ValueError(f"unknown answer format {answer_format!r}; choose one of {', '.join(FORMATS)}")


def extract_reference(answer_format: str, solution: str) -> Optional[str]:
    """The reference answer of a solution text in `answer_format` ("gsm8k" or "math"), or None."""
    _check_format(answer_format)
    return extract_gsm8k_reference(solution) if answer_format == "gsm8k" else extract_math_reference(solution)


def extract_prediction(answer_format: str, generated: str) -> Optional[str]:
    """The answer a generated text gives in `answer_format` ("gsm8k" or "math"), or None."""
    _check_format(answer_format)
    return extract_gsm8k_prediction(generated) if answer_format == "gsm8k" else extract_math_prediction(generated)


def answers_equal(answer_format: str, prediction: Optional[str], reference: Optional[str]) -> bool:
    """Whether the extracted prediction counts as the reference in `answer_format`; None is always wrong."""
    _check_format(answer_format)
    if answer_format == "gsm8k":
        return gsm8k_equal(prediction, reference)
    return math_equal(prediction, reference)
