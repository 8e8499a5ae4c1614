"""The Bigram-Backcopy data module: the generative rule, its exact optimum, the domains, and
resumable training through train.py."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train
from outlier_lab.data.backcopy_chain import entropy, read_source
from outlier_lab.data.bigram_backcopy import TRAIN, BigramBackcopyDataModule, GeneratedBatches
from outlier_lab.errors import ConfigError
from tests.helpers import InterruptAt, compose_train, read_metric  # noqa: F401  (InterruptAt: by config)


def text_file(tmp_path, text: str, name="source.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode())
    return str(path)


def markov_text(n=400, seed=0) -> str:
    """Letters a..e with falling frequencies: a V=4 source where e is dropped."""
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list("abcde"), size=n, p=[0.4, 0.27, 0.18, 0.1, 0.05]))


@pytest.fixture(scope="module")
def stdlib_dm():
    dm = BigramBackcopyDataModule(block_size=128)  # the defaults: V=64, k=3, 4 MB of the stdlib
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    return text_file(tmp_path_factory.mktemp("bb"), markov_text(3000, seed=1))


def with_trainer(dm, max_steps=8, global_step=0, rank=0, world_size=1):
    dm.trainer = SimpleNamespace(accumulate_grad_batches=1, max_steps=max_steps, global_step=global_step,
                                 global_rank=rank, world_size=world_size)
    return dm


def test_vocabulary_is_the_most_frequent_bytes_ties_by_value_and_empty_rows_get_the_unigram(tmp_path):
    dm = BigramBackcopyDataModule(vocab=3, triggers=1, source=text_file(tmp_path, "ba\nb\n\na cc"), block_size=8)
    # counts: a 2, b 2, \n 3, space 1, c 2 -> \n, then a, b (c ties but has the larger byte value)
    assert [dm.decode_token(i) for i in range(4)] == ["\\n", "a", "b", "<bos>"] and dm.trigger_bytes == b"\n"
    # filtered stream "ba\nb\n\na": a is followed by \n; b by a and \n
    np.testing.assert_allclose(dm.chain.P[1], [1, 0, 0])
    np.testing.assert_allclose(dm.chain.P[2], [0.5, 0.5, 0])
    dm = BigramBackcopyDataModule(vocab=3, triggers=1, source=text_file(tmp_path, "aabbc"), block_size=8)
    np.testing.assert_allclose(dm.chain.P[2], [0.4, 0.4, 0.2])  # c never followed by anything: u
    np.testing.assert_allclose(dm.chain.p_start, [0, 2 / 3, 1 / 3])  # u without the trigger a


def test_batches_are_a_pure_function_of_seed_and_index_and_resume_and_shard(small_source):
    a, b = (with_trainer(BigramBackcopyDataModule(vocab=5, source=small_source, block_size=16, batch_size=4))
            for _ in range(2))
    batches = list(a.train_dataloader())
    assert len(batches) == 8
    for i, (x, y) in enumerate(list(b.train_dataloader())):
        assert torch.equal(x, batches[i][0]) and torch.equal(y, batches[i][1])
    assert not torch.equal(batches[0][1], batches[1][1])
    other = with_trainer(BigramBackcopyDataModule(vocab=5, source=small_source, block_size=16, batch_size=4, seed=1))
    assert not torch.equal(next(iter(other.train_dataloader()))[1], batches[0][1])
    resumed = list(with_trainer(b, global_step=5).train_dataloader())
    assert len(resumed) == 3 and torch.equal(resumed[0][1], batches[5][1])
    # rank 1 of 2 with batch 2 sees rows 2..3 of the single-process batch of 4
    half = with_trainer(BigramBackcopyDataModule(vocab=5, source=small_source, block_size=16, batch_size=2),
                        rank=1, world_size=2)
    assert torch.equal(next(iter(half.train_dataloader()))[1], batches[0][1][2:])
    # validation, calibration and probe rows: fixed, and from streams other than training
    assert all(torch.equal(v[1], w[1]) for v, w in zip(a.validation_batches(), b.validation_batches()))
    assert torch.equal(a.probe_batch(3), b.probe_batch(3)) and torch.equal(a.probe_batch(3), a.probe_batch(3))
    firsts = [a.validation_batches()[0][1], a.calibration_batches(1)[0][1], batches[0][1]]
    assert all(not torch.equal(p, q) for p, q in itertools.combinations(firsts, 2))


def test_generated_rows_follow_the_backcopy_rule_and_the_bigram(stdlib_dm):
    dm, k = stdlib_dm, 3
    x, y = GeneratedBatches(dm.chain, 7, TRAIN, 4000, 1)[0]
    assert (x[:, 0] == dm.bos).all() and torch.equal(x[:, 1:], y[:, :-1]) and dm.vocab_size == 65
    s = y.numpy()  # s_1 .. s_T
    trig = s < k
    assert not trig[:, 0].any() and not (trig[:, :-1] & trig[:, 1:]).any()
    t = np.nonzero(trig[:, 1:-1])
    assert len(t[0]) > 10_000 and (s[t[0], t[1] + 2] == s[t[0], t[1]]).all()  # s_{t+1} = s_{t-1}
    # non-trigger transitions: counts within 5 sigma of n P on rows seen >= 2000 times
    a, b = s[:, :-1][~trig[:, :-1]], s[:, 1:][~trig[:, :-1]]
    counts = np.bincount(a * 64 + b, minlength=64 * 64).reshape(64, 64)
    n = counts.sum(1, keepdims=True)
    rows = n[:, 0] >= 2000
    assert rows.sum() >= 20
    expected = n * dm.chain.P
    assert (np.abs(counts - expected) <= 5 * np.sqrt(expected * (1 - dm.chain.P)) + 1)[rows].all()
    first = np.bincount(s[:, 0], minlength=64)
    assert (np.abs(first - 4000 * dm.chain.p_start) <= 5 * np.sqrt(4000 * dm.chain.p_start) + 1).all()


def brute_force(dm) -> dict[str, float]:
    """The Bayes-optimal loss from the enumerated joint of every sequence, by prefixes."""
    c, V, k = dm.chain, dm.vocab, dm.triggers
    bos, T = dm.bos is not None, dm.block_size
    N = T + (not bos)
    joint = {}
    for seq in itertools.product(range(V), repeat=N):
        p = c.p_start[seq[0]]
        for t in range(1, N):
            if seq[t - 1] < k:
                p *= float(t >= 2 and seq[t] == seq[t - 2])
            else:
                p *= c.P[seq[t - 1], seq[t]]
        if p > 0:
            joint[seq] = p
    prefix = {}
    for seq, p in joint.items():
        for n in range(N + 1):
            prefix[seq[:n]] = prefix.get(seq[:n], 0.0) + p
    total = dormant = dormant_n = 0.0
    for seq, p in joint.items():
        for j in range(T):  # input position j predicts s at index n = j (+1 without BOS)
            n = j + (not bos)
            loss = -math.log(prefix[seq[: n + 1]] / prefix[seq[:n]])
            total += p * loss / T
            if n >= 1 and seq[n - 1] >= k:  # the query token s at index n-1 (BOS is no query)
                dormant, dormant_n = dormant + p * loss, dormant_n + p
    targets = np.zeros(V)
    for seq, p in joint.items():
        for n in range(1 - bos, T + 1 - bos):
            targets[seq[n]] += p / T
    return dict(all=total, dormant=dormant / dormant_n, unigram=float(entropy(targets)))


@pytest.mark.parametrize("bos", [True, False])
def test_exact_optimum_equals_brute_force_over_every_sequence(tmp_path, bos):
    dm = BigramBackcopyDataModule(vocab=4, triggers=1, source=text_file(tmp_path, markov_text()), block_size=5, bos=bos)
    assert dm.decode_token(0) == "a" and dm.vocab_size == 4 + bos
    expected = brute_force(dm)
    assert dm.optimum_loss == pytest.approx(expected["all"], abs=1e-9)
    assert dm.optimum_losses == pytest.approx({"active": 0.0, "dormant": expected["dormant"], "all": expected["all"]},
                                              abs=1e-9)
    assert dm.unigram_loss == pytest.approx(expected["unigram"], abs=1e-9)


def test_position_optimum_is_the_expected_true_loss(stdlib_dm):
    dm = stdlib_dm
    x, y = GeneratedBatches(dm.chain, 3, TRAIN, 3000, 1)[0]
    opt = dm.position_optimum(x).double()
    true_p = torch.as_tensor(dm.chain.P)[x[:, 1:], y[:, 1:]]
    nll = torch.cat([-torch.as_tensor(np.log(dm.chain.p_start))[y[:, :1]], -true_p.log()], dim=1)
    domains = dm.probe_domains(x)
    dormant = domains["dormant"]
    d = (nll - opt)[dormant | (x == dm.bos)]  # and the first token after BOS
    assert abs(d.mean()) <= 4 * d.std() / math.sqrt(len(d))
    assert torch.equal(opt[domains["active"]], torch.zeros(int(domains["active"].sum()), dtype=opt.dtype))
    assert (y[:, 1:][domains["active"][:, 1:]] == x[:, :-1][domains["active"][:, 1:]]).all()  # the copy
    # the exact optima are the expectations of position_optimum over rows
    rows = opt.mean(1)
    assert abs(rows.mean() - dm.optimum_loss) <= 4 * rows.std() / math.sqrt(len(rows))
    a, b = (opt * dormant).sum(1), dormant.sum(1).double()
    ratio = a.sum() / b.sum()
    assert abs(ratio - dm.optimum_losses["dormant"]) <= 4 * (a - ratio * b).std() / math.sqrt(len(a)) / b.mean()
    frac = domains["active"].double().mean(1)
    assert abs(frac.mean() - dm.trigger_rate) <= 4 * frac.std() / math.sqrt(len(frac))


@pytest.mark.parametrize("bos", [True, False])
def test_domains_mark_the_triggers_as_active_and_bos_as_neither(tmp_path, bos):
    dm = BigramBackcopyDataModule(vocab=4, triggers=1, source=text_file(tmp_path, markov_text()), block_size=7, bos=bos)
    row = [3, 0, 3, 2, 0, 2] if bos else [3, 0, 3, 2, 0, 2, 1]
    tokens = torch.tensor([[4, *row] if bos else row])
    domains = dm.probe_domains(tokens)
    active = [t == 0 for t in tokens[0].tolist()]
    assert domains["active"][0].tolist() == active
    assert domains["dormant"][0].tolist() == [not a and t != 4 for a, t in zip(active, tokens[0].tolist())]
    h = entropy(dm.chain.P)
    expected = [entropy(dm.chain.p_start) if t == 4 else 0.0 if t == 0 else h[t] for t in tokens[0].tolist()]
    assert dm.position_optimum(tokens)[0].tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(triggers=0), r"data.triggers=0 must be between 1 and 3 \(data.vocab=4\)"),
    (dict(triggers=4), r"data.triggers=4 must be between 1 and 3 \(data.vocab=4\)"),
    (dict(vocab=6), r"data.vocab=6 is more than the 5 distinct byte values"),
    (dict(vocab=1), r"data.vocab=1 must be between 2 and 256"),
    (dict(block_size=2), r"data.block_size=2 is too short for a back-copy.*minimum is 3"),
    (dict(source="/no/such/source.txt"), r"data.source file not found: '/no/such/source.txt'"),
    (dict(batch_size=0), r"data.batch_size=0"),
])
def test_bad_values_are_one_line_config_errors(tmp_path, kwargs, message):
    args = {**dict(vocab=4, triggers=1, source=text_file(tmp_path, markov_text()), block_size=8), **kwargs}
    with pytest.raises(ConfigError, match=message):
        BigramBackcopyDataModule(**args).setup()


@pytest.mark.slow
def test_default_source_is_the_stdlib_documents_in_order():
    from outlier_lab.data.corpora import PythonStdlib

    size, parts = 300_000, []
    for doc in PythonStdlib().documents():
        parts.append(doc.encode())
        if sum(map(len, parts)) >= size:
            break
    assert read_source(None, size) == b"".join(parts)[:size]


def test_resume_continues_exactly(tmp_path, small_source):
    """Crash after the step-3 checkpoint, resume to 6: the losses equal an uninterrupted run's."""
    def cfg(name, *extra):
        return compose_train(
            tmp_path / name, "data=bigram_backcopy", f"data.source={small_source}", "data.vocab=5", "data.triggers=1",
            "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32", "data.batch_size=4",
            "data.val_batches=2", "trainer.log_every_n_steps=1", "trainer.max_steps=6", "trainer.val_check_interval=3",
            "optim.warmup_steps=2", "callbacks.progress_bar=null", "callbacks.model_summary=null",
            "callbacks.outlier_monitor.plots=false", "callbacks.outlier_monitor.every_n_steps=2", "eval.compression=[]",
            "logger=csv", *extra)

    train.train(cfg("straight"))
    with pytest.raises(RuntimeError, match="simulated crash at step 4"):
        train.train(cfg("resumed", "+callbacks.crash._target_=tests.helpers.InterruptAt", "+callbacks.crash.step=4"))
    train.train(cfg("resumed", "ckpt_path=auto"))
    ref, res = read_metric(tmp_path / "straight", "train/loss"), read_metric(tmp_path / "resumed", "train/loss")
    assert sorted(res) == sorted(ref) == list(range(6))
    assert [res[s] for s in range(6)] == [ref[s] for s in range(6)]


def test_true_loss_is_the_process_log_loss_of_each_next_token(tmp_path, stdlib_dm):
    dm = BigramBackcopyDataModule(vocab=4, triggers=1, source=text_file(tmp_path, markov_text()), block_size=7)
    tokens = torch.tensor([[4, 3, 0, 3, 2, 0, 1]])  # BOS; the copy after the second trigger is wrong
    P, start = dm.chain.P, dm.chain.p_start
    expected = [-np.log(start[3]), -np.log(P[3, 0]), 0.0, -np.log(P[3, 2]), -np.log(P[2, 0]), math.inf]
    got = dm.true_loss(tokens)[0]
    assert got[:-1].tolist() == pytest.approx(expected, rel=1e-6) and math.isnan(got[-1])
    # on generated rows it is finite, and its mean is the exact optimum (its expectation)
    x = stdlib_dm.probe_batch(400)
    loss = stdlib_dm.true_loss(x)[:, :-1].double()
    assert torch.isfinite(loss).all()
    expected_mean = stdlib_dm.position_optimum(x)[:, :-1].double().mean()
    assert abs(loss.mean() - expected_mean) <= 4 * loss.std() / math.sqrt(loss.numel())
