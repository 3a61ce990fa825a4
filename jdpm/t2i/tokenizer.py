"""A word tokenizer with CLIP's layout: [SOS], the words, [EOS], then [EOS] padding to a fixed length.

Stable Diffusion 1.x pads its 77 positions with the end token, so every position after the prompt holds an
[EOS] whose (causal) text embedding summarises the whole prompt; this tokenizer reproduces that layout
for a small closed vocabulary (ids: 0 = [SOS], 1 = [EOS], then the words).
"""

import numpy as np

SOS, EOS = "<|startoftext|>", "<|endoftext|>"


class WordTokenizer:
  """Whitespace word tokenizer over a fixed vocabulary.

  Attributes:
    words: the vocabulary after the two special tokens.
    context_length: L, the fixed number of positions (start, words, end and padding).
  """

  def __init__(self, words, context_length):
    self.words = tuple(words)
    self.context_length = int(context_length)
    self.vocab = {SOS: 0, EOS: 1, **{w: i + 2 for i, w in enumerate(self.words)}}

  @property
  def sos_id(self):
    return 0

  @property
  def eos_id(self):
    return 1

  @property
  def vocab_size(self):
    return len(self.vocab)

  def count(self, prompt):
    """Tokens of a prompt with its start and end tokens."""
    return len(prompt.split()) + 2

  def encode(self, prompts):
    """A prompt or a list of B prompts → (B, L) int32 ids.

    Raises ValueError for an empty prompt, a prompt longer than the context (L − 2 words) or an
    unknown word."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = np.full((len(prompts), self.context_length), self.eos_id, np.int32)
    for i, prompt in enumerate(prompts):
      words = prompt.lower().split()
      if not words:
        raise ValueError(f"prompt {i} is empty: give a description such as 'a big red square' (the "
                         f"empty prompt is the unconditional context; use empty_ids()).")
      if len(words) + 2 > self.context_length:
        raise ValueError(f"prompt {i} has {len(words)} words; the context of {self.context_length} "
                         f"positions holds at most {self.context_length - 2} (plus start and end tokens).")
      unknown = [w for w in words if w not in self.vocab or w in (SOS, EOS)]
      if unknown:
        raise ValueError(f"prompt {i} has words outside the vocabulary: {unknown}; known: {self.words}.")
      ids[i, 0] = self.sos_id
      ids[i, 1:len(words) + 1] = [self.vocab[w] for w in words]
    return ids

  def empty_ids(self, batch=1):
    """(batch, L) ids of the empty prompt: [SOS] then [EOS] everywhere (the null condition)."""
    ids = np.full((batch, self.context_length), self.eos_id, np.int32)
    ids[:, 0] = self.sos_id
    return ids

  def eos_positions(self, ids):
    """(B, L) bool: the [EOS] positions (the end token and the padding)."""
    return np.asarray(ids) == self.eos_id

  def decode(self, ids):
    """(L,) ids → the tokens as strings."""
    inverse = {i: w for w, i in self.vocab.items()}
    return [inverse[int(i)] for i in ids]
