"""Evaluation: answer extraction for GSM8K and MATH, batched greedy decoding, and the accuracy CLI."""
