"""A 1-layer LSTM language model on PTB-format text (one sentence per line, words separated by
spaces), the paper's language-model recipe. Fitness is the validation loss (mean cross-entropy per
token, in nats); the error metric is the perplexity, exp(loss).

Data comes from Parquet shards written by `esgd data import ptb` (splits `train`, `valid`,
optionally `test`; one row per line, column `text`). The vocabulary is the training set's words
plus `<eos>` (ends every line) and `<unk>` (any word not seen in training), ordered by frequency.

Each split becomes one token stream cut into fixed windows: inputs [N, warmup + bptt] and
next-token targets of the same shape, so the engine trains and evaluates it like any other task
(examples along dim 0, the loss flattens). Windows are shuffled while training, so no LSTM state
carries from one window to the next; with `warmup` > 0 each window first reads the `warmup`
tokens before it, whose targets are ignored (-100), so every scored token has at least that much
context, which brings the numbers closer to the usual stateful evaluation.

Dropout (`dropout`, on the embedding and on the LSTM's output) draws from torch's RNG, which the
SGD step seeds from (seed, generation, member, epoch), so runs stay reproducible.
"""

import math
from collections import Counter
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from esgd.worker.data import dataset
from esgd.worker.task import Task

KIND = "ptb"
EOS, UNK = "<eos>", "<unk>"
IGNORE = -100


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=1, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)
        self.drop_in, self.drop_out = nn.Dropout(dropout), nn.Dropout(dropout)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, T] -> logits [N, T, vocab]."""
        out, _ = self.lstm(self.drop_in(self.embedding(tokens)))
        return self.decoder(self.drop_out(out))


def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the scored tokens (targets -100 are ignored)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def vocabulary(lines: list[str]) -> dict[str, int]:
    counts = Counter(word for line in lines for word in line.split())
    counts[EOS] += len(lines)
    counts.setdefault(UNK, 0)
    return {word: i for i, (word, _) in enumerate(sorted(counts.items(), key=lambda item: (-item[1], item[0])))}


def stream(lines: list[str], vocab: dict[str, int]) -> torch.Tensor:
    unk = vocab[UNK]
    return torch.tensor([vocab.get(w, unk) for line in lines for w in [*line.split(), EOS]], dtype=torch.long)


def windows(tokens: torch.Tensor, bptt: int, warmup: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of `bptt` scored tokens, each preceded by `warmup` context tokens."""
    count = (len(tokens) - 1 - warmup) // bptt
    if count < 1:
        raise TypeError(f"a split of {len(tokens)} tokens is too short for bptt={bptt}, warmup={warmup}")
    starts = warmup + bptt * torch.arange(count)
    index = starts[:, None] - warmup + torch.arange(warmup + bptt)[None, :]
    inputs, targets = tokens[index], tokens[index + 1].clone()
    targets[:, :warmup] = IGNORE
    return inputs, targets


def lines_of(data: str, split: str) -> list[str]:
    table = dataset.read_split(data, KIND, split, columns=["text"])
    return [line for line in table.column("text").to_pylist() if line.strip()]


def task(
    data: str,
    embed: int = 200,
    hidden: int = 200,
    bptt: int = 35,
    warmup: int = 0,
    dropout: float = 0.0,
    fitness: str = "valid",
    eval_batch_size: int = 256,
) -> Task:
    """`data`: URI of the imported dataset (`<store>/data/ptb`). `fitness`: the split whose loss is
    the fitness ("valid", or "test" if imported)."""
    if not 0 <= dropout < 1:
        raise TypeError(f"dropout must be in [0, 1), got {dropout}")
    train_lines = lines_of(data, "train")
    vocab = vocabulary(train_lines)
    train = windows(stream(train_lines, vocab), bptt, warmup)
    fit = windows(stream(lines_of(data, fitness), vocab), bptt, warmup)
    return Task(
        model=partial(LSTMLanguageModel, len(vocab), embed, hidden, dropout),
        train=train,
        fitness=fit,
        loss=loss,
        metric_of_fitness=math.exp,  # perplexity = exp(mean token cross-entropy)
        metric_name="perplexity",
        eval_batch_size=eval_batch_size,
    )
