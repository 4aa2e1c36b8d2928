"""Translation with noisy references: English number words to German ones, a GRU encoder-decoder.

The task is generated, so it needs no network: ``3421`` is ``three thousand four
hundred twenty one`` in the source and ``drei tausend vier hundert ein und
zwanzig`` in the target (German says the units before the tens: a reordering the
decoder must learn). Training references have token-level noise (each word replaced
by a random target word with probability ``token_noise``); validation and test are
clean. Rows: one fixed candidate each (the sweep), and SLF; every row at its
best-validation checkpoint (exact match of greedy decoding on the clean split).
Reported: exact match and token accuracy (teacher-forced) on the test split.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

import slf_tf
from slf_tf.experiments import common, fair_fit

PAD, BOS, EOS = 0, 1, 2
_ONES = "zero one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_EINS = "null eins zwei drei vier fuenf sechs sieben acht neun".split()
_ZEHN = "zehn elf zwoelf dreizehn vierzehn fuenfzehn sechzehn siebzehn achtzehn neunzehn".split()
_ZIG = "_ _ zwanzig dreissig vierzig fuenfzig sechzig siebzig achtzig neunzig".split()
SOURCE_WORDS = ["<pad>", *_ONES, *_TEENS, *_TENS[2:], "hundred", "thousand"]
TARGET_WORDS = ["<pad>", "<bos>", "<eos>", *_EINS, "ein", *_ZEHN, *_ZIG[2:], "hundert", "tausend", "und"]
SOURCE_LENGTH, TARGET_LENGTH = 6, 8  # the longest number (7777) has 6 source words, 7 target words + <eos>


def english(n: int) -> list[str]:
    """``n`` in [1, 9999] as English number words (``twenty one``)."""
    words, rest = [], n % 100
    if n >= 1000:
        words += [_ONES[n // 1000], "thousand"]
    if n % 1000 >= 100:
        words += [_ONES[n // 100 % 10], "hundred"]
    if 0 < rest < 10:
        words.append(_ONES[rest])
    elif 10 <= rest < 20:
        words.append(_TEENS[rest - 10])
    elif rest >= 20:
        words += [_TENS[rest // 10]] + ([_ONES[rest % 10]] if rest % 10 else [])
    return words


def german(n: int) -> list[str]:
    """``n`` in [1, 9999] as German number words, units before tens (``ein und zwanzig``)."""
    words, rest = [], n % 100
    if n >= 1000:
        words += ["ein" if n // 1000 == 1 else _EINS[n // 1000], "tausend"]
    if n % 1000 >= 100:
        words += ["ein" if n // 100 % 10 == 1 else _EINS[n // 100 % 10], "hundert"]
    if 0 < rest < 10:
        words.append(_EINS[rest])
    elif 10 <= rest < 20:
        words.append(_ZEHN[rest - 10])
    elif rest >= 20:
        unit = rest % 10
        words += ([("ein" if unit == 1 else _EINS[unit]), "und"] if unit else []) + [_ZIG[rest // 10]]
    return words


def encode(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source ids ``[n, SOURCE_LENGTH]`` and target ids ``[n, TARGET_LENGTH]`` (with ``<eos>``), 0-padded."""
    src_index, tgt_index = {w: i for i, w in enumerate(SOURCE_WORDS)}, {w: i for i, w in enumerate(TARGET_WORDS)}
    src = np.zeros((len(numbers), SOURCE_LENGTH), np.int32)
    tgt = np.zeros((len(numbers), TARGET_LENGTH), np.int32)
    for row, n in enumerate(numbers):
        s, t = [src_index[w] for w in english(int(n))], [tgt_index[w] for w in german(int(n))] + [EOS]
        src[row, : len(s)], tgt[row, : len(t)] = s, t
    return src, tgt


def corrupt(targets: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each word (not ``<eos>``, not padding) replaced by a uniformly drawn word with probability ``rate``."""
    noisy = targets.copy()
    words = targets > EOS
    flip = words & (rng.random(targets.shape) < rate)
    noisy[flip] = rng.integers(EOS + 1, len(TARGET_WORDS), size=int(flip.sum()))
    return noisy


def teacher_inputs(targets: np.ndarray) -> np.ndarray:
    """The decoder's inputs: ``<bos>`` then the targets shifted right (same padding, so the same mask)."""
    shifted = np.concatenate([np.full((len(targets), 1), BOS, targets.dtype), targets[:, :-1]], axis=1)
    return np.where(targets > PAD, shifted, PAD).astype(np.int32)


def make_data(config, seed: int) -> dict[str, tuple[Any, np.ndarray]]:
    """Disjoint numbers for train / val / test (fixed by ``config.data_seed``); train references noisy (``seed``)."""
    numbers = np.random.default_rng(config.data_seed).permutation(np.arange(1, 10_000))
    sizes = np.cumsum([config.train_examples, config.val_examples, config.test_examples])
    parts = np.split(numbers[: sizes[-1]], sizes[:-1])
    out = {}
    for name, part in zip(("train", "val", "test"), parts, strict=True):
        src, tgt = encode(part)
        if name == "train":
            tgt = corrupt(tgt, config.token_noise, np.random.default_rng(1000 + seed))
        out[name] = ([src, teacher_inputs(tgt)], tgt)
    return out


def build_network(units: int, seed: int) -> keras.Model:
    """Embedding + GRU encoder, its state starting a GRU decoder (teacher-forced); logits ``[batch, T, V]``."""
    keras.utils.set_random_seed(seed)
    source = keras.Input((SOURCE_LENGTH,), dtype="int32", name="source")
    decoder_in = keras.Input((TARGET_LENGTH,), dtype="int32", name="decoder_inputs")
    embedded = keras.layers.Embedding(len(SOURCE_WORDS), units // 2, mask_zero=True)(source)
    _, state = keras.layers.GRU(units, return_state=True)(embedded)
    h = keras.layers.Embedding(len(TARGET_WORDS), units // 2, mask_zero=True)(decoder_in)
    h = keras.layers.GRU(units, return_sequences=True)(h, initial_state=state)
    return keras.Model([source, decoder_in], keras.layers.Dense(len(TARGET_WORDS))(h), name="translator")


def greedy_decode(network: keras.Model, source: np.ndarray) -> np.ndarray:
    """Target ids ``[n, TARGET_LENGTH]`` decoded greedily, 0 after ``<eos>``."""
    out = np.zeros((len(source), TARGET_LENGTH), np.int32)
    inputs = np.zeros_like(out)
    inputs[:, 0] = BOS
    for t in range(TARGET_LENGTH):
        logits = network([source, inputs], training=False)
        out[:, t] = np.argmax(np.asarray(logits[:, t]), axis=-1)
        if t + 1 < TARGET_LENGTH:
            inputs[:, t + 1] = out[:, t]
    ended = np.cumsum(out == EOS, axis=1) - (out == EOS) > 0  # positions after the first <eos>
    return np.where(ended, PAD, out)


def evaluate(network: keras.Model, data: tuple[Any, np.ndarray]) -> dict[str, float]:
    """Exact match of greedy decoding, and teacher-forced token accuracy over the reference's words and <eos>."""
    (source, decoder_in), target = data
    decoded = greedy_decode(network, source)
    exact = float(np.mean(np.all(decoded == target, axis=1)))
    forced = np.argmax(np.asarray(network([source, decoder_in], training=False)), axis=-1)
    valid = target > PAD
    return {"exact_match": exact, "token_accuracy": float(np.sum((forced == target) & valid) / np.sum(valid))}


def run(config, workdir: str) -> dict[str, Any]:
    """The sweep and SLF over ``config.seeds`` seeds; writes translation.md, results.json and TensorBoard runs."""
    common.prepare(workdir, config)
    losses = list(config.candidates)

    def build(name):
        def make(seed):
            if name.startswith("slf"):
                loss = slf_tf.StochasticLoss(losses, seed=seed, **fair_fit.slf_defaults(config))
            else:
                loss = slf_tf.FixedLoss(losses, loss=name.removeprefix("fixed:"))
            return build_network(config.units, seed), loss

        return make

    rows = {f"fixed:{name}": build(f"fixed:{name}") for name in losses} | {"slf": build("slf")}
    rows |= {f"slf[{variant}]": build("slf") for variant in config.slf_variants}
    data_by_seed: dict[int, dict] = {}

    def train(name, network, loss, seed):
        data = data_by_seed.setdefault(seed, make_data(config, seed))
        settings = fair_fit.variant_settings(name)
        model = slf_tf.SLFModel(network, data["val"], val_batch_size=config.val_batch_size, **settings)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss)
        writer = common.summary_writer(workdir, os.path.join(f"seed{seed}", name.replace(":", "_")))
        best = fair_fit.BestCheckpoint(network, lambda: _score(network, data["val"]), writer)
        x, y = data["train"]
        callbacks = [best, *fair_fit.slf_callbacks(config, seed)]
        model.fit(x, y, batch_size=config.batch_size, epochs=config.epochs, verbose=0, callbacks=callbacks)
        writer.close()
        result = {"val": best.best, "best_epoch": best.best_epoch, "test": evaluate(network, data["test"])}
        if name.startswith("slf"):
            result["coefficients"] = dict(zip(losses, np.asarray(loss.expected_coefficients()).tolist(), strict=True))
        return result

    results = fair_fit.fit_rows(rows, range(config.seeds), train)
    summary = fair_fit.summarise(results, ["exact_match", "token_accuracy"], "fixed:cross_entropy")
    markdown = fair_fit.table(summary, f"Translation, {100 * config.token_noise:.0f}% token noise")
    common.write_table(workdir, "translation", markdown)
    common.write_json(workdir, "results.json", {"summary": summary, "runs": results})
    print(markdown)
    return summary


def _score(network, val) -> tuple[float, dict]:
    metrics = evaluate(network, val)
    return metrics["exact_match"], metrics
