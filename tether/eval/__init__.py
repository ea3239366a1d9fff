"""Evaluation: reward-model accuracy and calibration, gold against proxy reward, KL, win rates.

`stats` holds the small numerical pieces (bootstrap intervals, rank correlation, calibration,
accuracy by bucket) as pure numpy functions, so each can be checked against hand-computed values.
"""
