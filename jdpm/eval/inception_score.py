"""Inception Score over class predictions, split as OpenAI's ADM evaluator (and improved-GAN) split it.

  IS = mean over splits of exp( mean_i KL(p(y | x_i) || p_split(y)) ),  p_split = mean of p(y | x_i) in the split

The ADM evaluator cuts the N predictions, in order, into consecutive splits of 5000 rows (the last one
shorter when N is not a multiple): 10 splits for the standard 50k samples. Its predictions are the softmax
of the 2048-d pool features times the Inception graph's 2048 x 1008 logit weights (no bias), i.e. 1008
classes; producing them is the feature extractor's job, this module starts from logits or probabilities.
"""

import numpy as np

ADM_SPLIT_SIZE = 5000


def inception_score(preds, *, from_logits=False, split_size=ADM_SPLIT_SIZE, num_splits=None):
  """The Inception Score of (N, C) class predictions.

  Args:
    preds: (N, C) probabilities (rows summing to 1), or logits with from_logits=True.
    from_logits: take a float64 log-softmax of `preds` first.
    split_size: rows per split, the ADM convention (50k rows -> 10 splits); the last split may be shorter.
    num_splits: if given, overrides split_size with this many near-equal consecutive splits (improved-GAN's
      convention; the same as split_size=5000 for 50k rows and 10 splits).
  Returns:
    the mean over splits of the per-split score, as a Python float.
  """
  preds = np.asarray(preds, np.float64)
  if preds.ndim != 2 or preds.shape[0] == 0:
    raise ValueError(f"predictions must be a non-empty (N, C) array; got shape {preds.shape}.")
  if from_logits:
    log_probs = preds - preds.max(axis=1, keepdims=True)
    log_probs -= np.log(np.sum(np.exp(log_probs), axis=1, keepdims=True))
  else:
    if np.any(preds < 0):
      raise ValueError("probabilities must be non-negative (pass from_logits=True for logits).")
    with np.errstate(divide="ignore"):
      log_probs = np.log(preds)
  if num_splits is not None:
    bounds = [(i * len(preds) // num_splits, (i + 1) * len(preds) // num_splits) for i in range(num_splits)]
  else:
    bounds = [(start, min(start + split_size, len(preds))) for start in range(0, len(preds), split_size)]
  scores = [np.exp(_mean_kl_to_marginal(log_probs[lo:hi])) for lo, hi in bounds if hi > lo]
  return float(np.mean(scores))


def _mean_kl_to_marginal(log_probs):
  """mean_i KL(p_i || mean_j p_j) for (n, C) log-probabilities."""
  probs = np.exp(log_probs)
  # p log p -> 0 as p -> 0: a probability that is exactly 0 (an underflowed softmax) contributes nothing,
  # where the reference's p * (log p - log q) would turn it into NaN.
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(probs > 0, probs * (log_probs - np.log(probs.mean(axis=0))), 0.0)
  return np.mean(np.sum(terms, axis=1))
