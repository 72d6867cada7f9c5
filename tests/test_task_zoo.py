"""The task zoo beyond MLPs: ImageConv (2-D and 1-D), the generated corpus, CharLM.

Training thresholds were set from measured runs (seeded, CPU float32) with wide
margins; each states the measured range next to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.config import CharLMTaskConfig, ImageConvTaskConfig
from lopt.data import load
from lopt.tasks import SPLITS, CharLM, ImageConv, build_task, device_data
from lopt.tasks.corpus import VOCAB, corpus_data, decode, encode, generate_corpus

LOG_V = math.log(len(VOCAB))


def _train(task, data, key, steps: int, lr: float):
    """Adam on ``task`` for ``steps`` steps -> (params, per-step train losses)."""
    opt = optax.adam(lr)
    k_init, k_steps = jax.random.split(key)
    params = task.init(k_init)

    def step(carry, k):
        params, state = carry
        loss, grads = jax.value_and_grad(task.loss)(params, task.batch(data, k, "train"))
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(
        step, (params, opt.init(params)), jax.random.split(k_steps, steps)
    )
    return params, losses


def _num_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# ---------------------------------------------------------------------------- data




@pytest.fixture(scope="module")
def digits_data(digits_root: Path):
    return device_data(load("digits", digits_root))


def _waves(n: int, seed: int, noise: float = 0.6, length: int = 40, classes: int = 4):
    """[n, 40] sinusoids, class = frequency (1..4 cycles), random phase, Gaussian noise.

    The random phase makes position uninformative, which a strided conv + global
    average pooling handles by construction.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    waves = np.stack([np.sin(2 * np.pi * (c + 1) * t / length) for c in range(classes)])
    y = rng.integers(0, classes, n)
    shift = rng.integers(0, length, n)
    x = np.stack([np.roll(waves[c], s) for c, s in zip(y, shift)])
    x = x + noise * rng.normal(size=x.shape)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


@pytest.fixture(scope="module")
def wave_data():
    sizes = {"train": 512, "inner_valid": 64, "outer_valid": 64, "test": 256}
    return {s: _waves(n, seed) for seed, (s, n) in enumerate(sizes.items())}


@pytest.fixture(scope="module")
def corpus():
    return {s: jnp.asarray(t) for s, t in corpus_data(0, 20000).items()}


# ---------------------------------------------------------------------------- ImageConv


def _conv_param_count(example_shape, channels, k, num_classes) -> int:
    d = len(example_shape) - 1
    count, c_in = 0, example_shape[-1]
    for c_out in channels:
        count += k**d * c_in * c_out + c_out
        c_in = c_out
    return count + c_in * num_classes + num_classes


@pytest.mark.parametrize(
    ("input_shape", "example_shape", "num_classes", "expected"),
    [
        ((8, 8, 1), (8, 8, 1), 10, 1418),  # (9*1*8+8) + (9*8*16+16) + (16*10+10)
        ((40,), (40, 1), 4, 500),  # (3*1*8+8) + (3*8*16+16) + (16*4+4)
    ],
)
def test_image_conv_shapes_and_param_count(input_shape, example_shape, num_classes, expected):
    task = ImageConv(input_shape, num_classes, batch_size=5)
    params = jax.jit(task.init)(jax.random.key(0))
    count = _conv_param_count(example_shape, (8, 16), 3, num_classes)
    assert _num_params(params) == count == expected
    assert params["conv_0"]["w"].shape == (3,) * (len(example_shape) - 1) + (
        example_shape[-1],
        8,
    )
    x = jax.random.normal(jax.random.key(1), (5, *input_shape))
    assert jax.jit(task.logits)(params, x).shape == (5, num_classes)
    assert all(float(jnp.abs(p["b"]).max()) == 0.0 for p in params.values())


def test_image_conv_init_is_scaled_lecun_normal():
    task = ImageConv((8, 8, 3), 10, channels=(256,))
    w = jax.jit(task.init)(jax.random.key(0))["conv_0"]["w"]  # fan_in 3*3*3 = 27, 6912 weights
    # sample std of 6912 normals has relative s.e. ~1/sqrt(2*6912) = 0.9%; allow 5%
    assert float(jnp.std(w)) == pytest.approx(1 / math.sqrt(27), rel=0.05)
    doubled = jax.jit(dataclasses.replace(task, init_scale=2.0).init)(jax.random.key(0))
    np.testing.assert_allclose(doubled["conv_0"]["w"], 2 * w, rtol=1e-6)


def test_image_conv_2d_matches_numpy_reference():
    """One stride-2 SAME conv layer + GAP + head against an explicit numpy loop."""
    task = ImageConv((5, 5, 2), 3, channels=(4,), activation="tanh")
    params = jax.jit(task.init)(jax.random.key(0))
    params = jax.tree.map(lambda p: p + 0.1, params)  # nonzero biases too
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 5, 2)))
    w, b = np.asarray(params["conv_0"]["w"]), np.asarray(params["conv_0"]["b"])
    # SAME, stride 2, k 3 on 5: output 3, total padding (3-1)*2 + 3 - 5 = 2 -> 1 each side
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((2, 3, 3, 4))
    for i in range(3):
        for j in range(3):
            patch = xp[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
            out[:, i, j] = np.einsum("nabc,abco->no", patch, w)
    feat = np.tanh(out + b).mean(axis=(1, 2))
    ref = feat @ np.asarray(params["head"]["w"]) + np.asarray(params["head"]["b"])
    np.testing.assert_allclose(
        jax.jit(task.logits)(params, jnp.asarray(x)), ref, rtol=1e-5, atol=1e-5
    )


def test_image_conv_1d_equals_2d_on_a_single_row():
    """A 1-D net on [L] equals the 2-D net on [1, L, 1] whose kernels hold the 1-D ones in
    the middle row (SAME padding pads a height-1 input by one row of zeros each side)."""
    t1 = ImageConv((40,), 4)
    t2 = ImageConv((1, 40, 1), 4)
    p1 = jax.jit(t1.init)(jax.random.key(0))
    p2 = jax.jit(t2.init)(jax.random.key(5))
    for name in ("conv_0", "conv_1"):
        p2[name]["w"] = p2[name]["w"].at[1].set(p1[name]["w"])  # rows 0, 2 see zeros only
        p2[name]["b"] = p1[name]["b"] + 0.05
        p1[name]["b"] = p1[name]["b"] + 0.05
    p2["head"] = p1["head"]
    x = jax.random.normal(jax.random.key(2), (3, 40))
    np.testing.assert_allclose(
        jax.jit(t1.logits)(p1, x),
        jax.jit(t2.logits)(p2, x.reshape(3, 1, 40, 1)),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    # measured over seeds 0..3 (Adam 1e-2, 150 steps):
    #   digits: train-loss ratio 0.04-0.05, test accuracy 0.95-0.96 (chance 0.10)
    #   waves:  train-loss ratio 0.13-0.15, test accuracy 0.94-0.95 (chance 0.25)
    # The vmap-equals-loop check costs a second compile of the training program, so it
    # runs on the (cheaper to compile) 1-D waves only; digits is vmapped here too.
    ("dataset", "input_shape", "num_classes", "max_ratio", "min_accuracy", "check_loop"),
    [("digits", (8, 8, 1), 10, 0.25, 0.85, False), ("waves", (40,), 4, 0.4, 0.8, True)],
)
def test_image_conv_learns_and_vmaps_over_seeds(
    request, dataset, input_shape, num_classes, max_ratio, min_accuracy, check_loop
):
    data = request.getfixturevalue("digits_data" if dataset == "digits" else "wave_data")
    task = ImageConv(input_shape, num_classes)
    key9 = jax.random.key(9)

    def run(key):  # initial eval, training, final evals: one program
        init = task.evaluate(task.init(jax.random.split(key)[0]), data, key9, "train")
        params, losses = _train(task, data, key, 150, 1e-2)
        final = task.evaluate(params, data, key9, "train")
        return init, final, task.evaluate(params, data, key9, "test"), params, losses

    keys = jax.random.split(jax.random.key(0), 4)
    init, final, test, params, losses = jax.jit(jax.vmap(run))(keys)
    # the brief asks for a > 40% drop; measured drops are far larger (see above)
    assert np.all(np.asarray(final["loss"]) < max_ratio * np.asarray(init["loss"]))
    assert np.all(np.asarray(test["accuracy"]) > min_accuracy)
    if not check_loop:
        return
    # the vmapped run is the per-seed run up to float32 reassociation: measured max
    # |difference| after 150 Adam steps (waves; digits alike) is 1.2e-7 (losses) and
    # 1.1e-6 (params)
    train = jax.jit(lambda k: _train(task, data, k, 150, 1e-2))
    for i, key in enumerate(keys):
        loop_params, loop_losses = train(key)
        np.testing.assert_allclose(losses[i], loop_losses, rtol=0, atol=1e-5)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loop_params)):
            np.testing.assert_allclose(a[i], b, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- corpus


def test_corpus_is_a_pinned_pure_function_of_seed_and_length():
    text = generate_corpus(0, 2000)
    assert len(text) == 2000
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert digest == "a76721e7780a5df30e980daa67855989e9ecc32a706510e490f9355622f7ad80"
    assert generate_corpus(0, 2000) == text
    assert generate_corpus(0, 5000)[:2000] == text  # shorter corpus = prefix of longer
    assert generate_corpus(1, 2000) != text
    assert generate_corpus(0, 0) == ""


def test_vocab_is_fixed_and_exactly_what_the_grammar_produces():
    assert VOCAB == "\n !,.0123456789?ABCDEFGHIJMSTWabcdefghijklmnopqrstuvwxyz"
    seen = set()
    for seed in range(3):
        text = generate_corpus(seed, 50_000)
        seen |= set(text)
        assert decode(encode(text)) == text
    assert seen == set(VOCAB)  # nothing outside VOCAB, and every VOCAB char occurs


def test_corpus_has_grammatical_structure():
    text = generate_corpus(0, 20_000)
    starts = re.findall(r"[.!?][ \n](.)", text)
    assert len(starts) > 300 and all(c.isupper() or c.isdigit() for c in starts)
    assert text[0].isupper() or text[0].isdigit()  # seed 0 opens with "6 lazy boxes"
    # subject-verb agreement: a determiner+noun subject directly followed by its verb
    assert re.search(r"\b[Tt]he cat (sees|likes|sleeps|runs)\b", text)
    assert not re.search(r"\b[Tt]he cats (sees|likes|sleeps|runs)\b", text)
    assert not re.search(r"\b[Tt]he cat (see|like|sleep|run)\b", text)
    assert " that " in text and ", " in text and "?" in text


@pytest.mark.parametrize(
    ("num_chars", "sizes"),
    [(20000, (16000, 1000, 1000, 2000)), (1001, (800, 50, 50, 101))],
)
def test_corpus_splits_are_contiguous_80_5_5_10(num_chars, sizes):
    splits = corpus_data(3, num_chars)
    assert tuple(splits) == SPLITS
    assert tuple(len(t) for t in splits.values()) == sizes
    assert all(t.dtype == np.int32 for t in splits.values())
    assert decode(np.concatenate(list(splits.values()))) == generate_corpus(3, num_chars)


# ---------------------------------------------------------------------------- CharLM

_MODELS = [("rnn", "gru"), ("rnn", "tanh"), ("transformer", "gru")]


def _lm(model: str, cell: str, **kw) -> CharLM:
    return CharLM(len(VOCAB), model=model, cell=cell, name=f"{model}_{cell}", **kw)


def test_char_lm_param_counts():
    v, h, t = len(VOCAB), 32, 32
    gru = jax.eval_shape(_lm("rnn", "gru", num_layers=2).init, jax.random.key(0))
    assert _num_params(gru) == v * h + 2 * (2 * h * 3 * h + 3 * h) + h * v + v
    tanh = jax.eval_shape(_lm("rnn", "tanh").init, jax.random.key(0))
    assert _num_params(tanh) == v * h + (2 * h * h + h) + h * v + v
    tf = jax.eval_shape(_lm("transformer", "gru", num_layers=2).init, jax.random.key(0))
    block = 2 * 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * 4 * h + 4 * h) + (4 * h * h + h)
    assert _num_params(tf) == v * h + t * h + 2 * block + 2 * h + h * v + v


def test_char_lm_batch_is_shifted_windows_of_the_split(corpus):
    task = _lm("transformer", "gru", batch_size=8, seq_len=16)
    inputs, targets = jax.jit(lambda k: task.batch(corpus, k, "train"))(jax.random.key(0))
    assert inputs.shape == targets.shape == (8, 16) and inputs.dtype == jnp.int32
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(corpus["train"]), 17)
    for x, y in zip(np.asarray(inputs), np.asarray(targets)):
        row = np.concatenate([x, y[-1:]])
        assert (windows == row).all(axis=1).any()


@pytest.mark.parametrize(("model", "cell"), _MODELS)
def test_char_lm_is_causal(model, cell):
    task = _lm(model, cell)
    params = jax.jit(task.init)(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, len(VOCAB))
    changed = tokens.at[:, 20].set((tokens[:, 20] + 1) % len(VOCAB))
    logits = jax.jit(task.logits)
    a, b = logits(params, tokens), logits(params, changed)
    assert a.shape == (2, 32, len(VOCAB))
    np.testing.assert_allclose(a[:, :20], b[:, :20], rtol=0, atol=1e-6)
    assert float(jnp.abs(a[:, 20:] - b[:, 20:]).max()) > 1e-3


@pytest.mark.parametrize("chunk", [512, 8, 7])
def test_char_lm_evaluate_is_exact(corpus, chunk):
    """Every non-overlapping window, whatever the chunk size (7 leaves 4 padded rows)."""
    task = dataclasses.replace(_lm("rnn", "gru"), eval_batch_size=chunk)
    params = jax.jit(task.init)(jax.random.key(0))
    # inner_valid: 1000 tokens -> 999 // 32 = 31 non-overlapping windows
    evaluate = jax.jit(task.evaluate, static_argnums=3)
    a = evaluate(params, corpus, jax.random.key(1), "inner_valid")
    b = evaluate(params, corpus, jax.random.key(2), "inner_valid")
    assert float(a["loss"]) == float(b["loss"])
    toks = np.asarray(corpus["inner_valid"])[: 31 * 32 + 1]
    inputs = jnp.asarray(toks[:-1].reshape(31, 32))
    targets = jnp.asarray(toks[1:].reshape(31, 32))
    logits = task.logits(params, inputs)
    assert float(a["loss"]) == pytest.approx(float(task.loss(params, (inputs, targets))), rel=1e-5)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == targets))
    assert float(a["accuracy"]) == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize("chunk", [5000, 1152, 500, 1000, 7])
def test_image_evaluate_is_exact_over_the_whole_split(digits_data, chunk):
    """digits train (1152 examples) in 1, 1, 3x384, 2x576 and 165x7 (3 padded) chunks.

    A random draw of the split (what evaluate did above eval_batch_size) had a 12 %
    standard deviation on this loss; exact means identical for every key and chunk size.
    """
    from lopt.tasks import ImageMLP

    task = ImageMLP(input_dim=64, num_classes=10, hidden_sizes=(32,), eval_batch_size=chunk)
    params = task.init(jax.random.key(0))
    params = jax.tree.map(lambda p: 3.0 * p, params)  # spread the per-example losses
    x, y = digits_data["train"]
    logits = np.asarray(task.logits(params, x), np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    want_loss = -logp[np.arange(len(y)), np.asarray(y)].mean()
    want_acc = (logits.argmax(1) == np.asarray(y)).mean()
    evaluate = jax.jit(task.evaluate, static_argnums=3)
    for key in (1, 2):
        got = evaluate(params, digits_data, jax.random.key(key), "train")
        assert float(got["loss"]) == pytest.approx(want_loss, rel=2e-6)  # float32 sums of 1152 terms
        assert float(got["accuracy"]) == pytest.approx(want_acc, abs=1e-6)


@pytest.mark.parametrize(("model", "cell"), _MODELS)
def test_char_lm_starts_near_log_vocab_and_learns(corpus, model, cell):
    """Adam(3e-3), 200 steps, seed 0 (defaults: hidden 32, 1 layer, seq 32, batch 16).

    Initial loss: the small head init gives a near-uniform prediction; measured
    |test loss - log V| <= 0.02 (log V = 4.025) over seeds 0..2 of every model, so the
    tolerance is 0.1 (the brief's 0.3 is looser).

    Measured final train loss (seeds 0..2): GRU 1.85-2.04, tanh-RNN 1.85-1.94,
    transformer 2.09-2.15 nats; test loss 1.88-2.20. The threshold 0.65 log V = 2.62 is
    tighter than the brief's 0.8 log V = 3.22 because the corpus' unigram entropy is
    ~3.13 nats (0.78 log V): 0.8 log V would pass without using any context.
    """
    task = _lm(model, cell)
    key9 = jax.random.key(9)

    @jax.jit  # one compile per model: initial eval, training, final evals
    def run(key):
        init = task.evaluate(task.init(jax.random.split(key)[0]), corpus, key9, "test")
        params, losses = _train(task, corpus, key, 200, 3e-3)
        final = task.evaluate(params, corpus, key9, "train")
        return init, losses, final, task.evaluate(params, corpus, key9, "test")

    init, losses, final, test = run(jax.random.key(0))
    assert abs(float(init["loss"]) - LOG_V) < 0.1
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert float(final["loss"]) < 0.65 * LOG_V
    assert float(test["loss"]) < 0.7 * LOG_V
    assert float(test["accuracy"]) > 0.25  # measured 0.34-0.46; uniform is 1/56


# ---------------------------------------------------------------------------- build_task


def test_build_image_conv_from_config(digits_root: Path):
    cfg = ImageConvTaskConfig(dataset="digits", channels=[4, 8], kernel_size=5, batch_size=7)
    task, data = build_task(cfg, digits_root, eval_batch_size=100)
    assert isinstance(task, ImageConv)
    assert task.name == "digits_conv_4x8"
    assert (task.input_shape, task.num_classes, task.channels) == ((8, 8, 1), 10, (4, 8))
    assert (task.kernel_size, task.batch_size, task.eval_batch_size) == (5, 7, 100)
    assert set(data) == set(SPLITS)
    params = jax.jit(task.init)(jax.random.key(0))
    assert _num_params(params) == _conv_param_count((8, 8, 1), (4, 8), 5, 10)
    x, y = task.batch(data, jax.random.key(1), "train")
    assert x.shape == (7, 8, 8, 1) and y.shape == (7,)
    assert np.isfinite(float(jax.jit(task.loss)(params, (x, y))))


def test_build_char_lm_from_config(tmp_path: Path):
    cfg = CharLMTaskConfig(model="rnn", hidden_size=16, num_layers=2, corpus_chars=5000)
    task, data = build_task(cfg, tmp_path, eval_batch_size=64)  # needs no files
    assert isinstance(task, CharLM)
    assert task.name == "charlm_rnn_16x2"
    assert (task.vocab_size, task.model, task.hidden_size, task.num_layers) == (
        len(VOCAB),
        "rnn",
        16,
        2,
    )
    assert {s: int(t.shape[0]) for s, t in data.items()} == {
        "train": 4000,
        "inner_valid": 250,
        "outer_valid": 250,
        "test": 500,
    }
    assert all(isinstance(t, jax.Array) and t.dtype == jnp.int32 for t in data.values())
    np.testing.assert_array_equal(data["test"], corpus_data(0, 5000)["test"])

    tf, tf_data = build_task(CharLMTaskConfig(), tmp_path)
    assert tf.name == "charlm_transformer_32x1" and (tf.seq_len, tf.num_heads) == (32, 2)
    inputs, _ = tf.batch(tf_data, jax.random.key(0), "train")
    assert inputs.shape == (16, 32)

    with pytest.raises(ValueError, match="too short for seq_len"):
        build_task(CharLMTaskConfig(corpus_chars=1000, seq_len=64), tmp_path)


def test_build_unknown_kind_lists_all_kinds(tmp_path: Path):
    with pytest.raises(ValueError, match="image_mlp, image_conv, quadratic, char_lm"):
        build_task(SimpleNamespace(kind="nope"), tmp_path)
