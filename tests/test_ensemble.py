"What a notebook can't show about `run_ensemble`: interruption and resume, out-of-memory retries, atomic files, stable keys."
import json, os, subprocess, sys
from pathlib import Path

import numpy as np, pandas as pd, pytest, torch
from fastai.callback.core import Callback

from paddy_lib.data import make_demo_paddy, get_test_files, LABELS, PaddyError
from paddy_lib.ensemble import (Member, run_ensemble, ensemble_preds, write_submission, atomic_write, member_key,
                                member_file, data_fingerprint, holdout_ids, load_member)

# timm's smallest ResNet at 32 px, 16 items per step: the mechanics, in a few seconds per member
FAST = dict(epochs=1, eff_bs=16, progress=False, num_workers=0, pretrained=False)
A = Member('test_resnet', ('squish', 96), 32, accum=2)
B = Member('test_resnet', ('crop', (128, 96)), 32, accum=2, weight=2)


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py: one PyTorch thread


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_demo_paddy(tmp_path_factory.mktemp('ens')/'paddy', n_train=80, n_test=8)


class Interrupt(Callback):
    "Ctrl-C after the first training batch of the `at`-th learner."
    in_member_key = False  # a stand-in for Ctrl-C: the resumed run, without it, must find the saved members
    def __init__(self, at): self.at, self.n = at, 0
    def before_fit(self):
        if not getattr(self.learn, '_seen_by_interrupt', False): self.learn._seen_by_interrupt = True; self.n += 1
    def after_batch(self):
        if self.training and self.n >= self.at: raise KeyboardInterrupt


class SmallCard(Callback):
    "CUDA's out-of-memory error for training micro-batches of more than `max_items` items."
    in_member_key = False
    def __init__(self, max_items): self.max_items, self.sizes = max_items, []
    def before_batch(self):
        if not self.training: return
        self.sizes.append(len(self.xb[0]))
        if len(self.xb[0]) > self.max_items: raise torch.OutOfMemoryError("CUDA out of memory. (stand-in)")


def test_interrupted_run_resumes_without_retraining(data, tmp_path):
    out = tmp_path/'run'
    with pytest.raises(KeyboardInterrupt): run_ensemble([A, B], data, out, cbs=Interrupt(2), **FAST)
    files = list((out/'members').glob('*.pt'))
    assert len(files) == 1 and files[0].name.startswith('test_resnet-')
    assert not [p for p in (out/'members').iterdir() if p.suffix != '.pt'], 'a temporary file was left behind'
    before = files[0].stat().st_mtime_ns
    logs = []
    run = run_ensemble([A, B], data, out, log=logs.append, **FAST)
    assert run.status == ['loaded', 'trained']
    assert files[0].stat().st_mtime_ns == before
    assert any('already done' in l for l in logs)
    assert len(list((out/'members').glob('*.pt'))) == 2
    # and a third run trains nothing
    assert run_ensemble([A, B], data, out, **FAST).status == ['loaded', 'loaded']


def test_out_of_memory_member_retried_with_larger_accum(data, tmp_path):
    card = SmallCard(4)
    logs = []
    run = run_ensemble([Member('test_resnet', ('squish', 96), 32, accum=1), B], data, tmp_path/'oom', cbs=card,
                       log=logs.append, **FAST)
    assert run.status == ['trained', 'trained']
    t = run.table
    assert t.accum.tolist() == [4, 4] and t.oom_retries.tolist() == [2, 1]   # 16 -> 8 -> 4, and 8 -> 4 items per micro-batch
    assert sum('retrying with accum=' in l for l in logs) == 3
    assert max(card.sizes[-5:]) <= 4
    assert len(run.write_submission(tmp_path/'sub.csv')) == 8


class BigImages(Callback):
    "CUDA's out-of-memory error for any training batch of images larger than `max_side` pixels, at any accum."
    in_member_key = False
    def __init__(self, max_side): self.max_side = max_side
    def before_batch(self):
        if self.training and self.xb[0].shape[-1] > self.max_side: raise torch.OutOfMemoryError("CUDA out of memory. (stand-in)")


def test_member_that_never_fits_is_skipped_and_run_goes_on(data, tmp_path):
    logs = []
    run = run_ensemble([Member('test_resnet', ('squish', 96), 48, accum=2), A], data, tmp_path/'skip',
                       cbs=BigImages(32), max_accum=4, log=logs.append, **FAST)
    assert run.status == ['failed', 'trained']
    assert run.table.accum.tolist()[1] == 2
    assert any('beyond max_accum=4' in l for l in logs)
    assert len(list((tmp_path/'skip'/'members').glob('*.pt'))) == 1   # only the member that finished is saved
    assert len(run.probs()) == 8 and len(run.holdout_report()) == 1 + 2


def test_tiny_budget_is_a_budget_error_not_a_crash(data, tmp_path):
    "A budget below what the process already holds: a BudgetError (find_accum's, hold_to_budget's) skips each member."
    logs = []
    run = run_ensemble([Member('test_resnet', ('squish', 96), 32), A], data, tmp_path/'budget', budget_mib=10,
                       log=logs.append, **FAST)
    assert run.status == ['failed', 'failed']
    assert sum(l.startswith("  doesn't fit") and 'budget' in l for l in logs) == 2
    assert logs[-1].startswith("left out of the ensemble: member 1 (test_resnet squish 96 @32): doesn't fit")


@pytest.mark.skipif(torch.cuda.is_available(), reason='MemoryBudget holds CPU runs; on CUDA the budget is the allocator limit')
def test_budget_forces_a_real_out_of_memory_and_a_retry(data, tmp_path):
    "No stand-in: a member over a CPU budget (MemoryBudget) runs out of memory, is freed, retried at a larger accum, done."
    from paddy_lib.memory import measure
    big = Member('convnext_atto', ('squish', 160), 128, accum=1)   # activations dominate: the peak falls with accum
    pk = {a: measure(big.arch, big.size, accum=a, item=big.resize, eff_bs=32, path=data, device='cpu')['peak_mib']
          for a in (1, 4)}
    assert pk[1] > pk[4]
    logs = []
    run = run_ensemble([big], data, tmp_path/'budget_oom', budget_mib=(pk[1] + pk[4])/2, log=logs.append,
                       **{**FAST, 'eff_bs': 32})
    assert run.status == ['trained'], logs
    r = run.results[0]['record']
    assert r['oom_retries'] >= 1 and r['accum'] == 2**r['oom_retries']
    assert any('out of memory at accum=1' in l and 'CPU out of memory: resident peak' in l and 'over the budget of' in l for l in logs)


def test_member_file_is_keyed_by_what_made_it(data):
    ctx = dict(data=data_fingerprint(data), epochs=1, lr=0.01)
    code = ("from paddy_lib.ensemble import Member, member_key; "
            f"print(member_key(Member('test_resnet', ('squish', 96), 32, accum=2), **{ctx!r}))")
    other = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                           env={**os.environ, 'PYTHONHASHSEED': '123'}).stdout.strip()
    assert other == member_key(A, **ctx)                         # the same in another process (no hash randomisation)
    assert member_key(A, **{**ctx, 'epochs': 2}) != member_key(A, **ctx)
    assert member_file('x', A, 'k').name == 'test_resnet-k.pt'


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    dest = tmp_path/'submission.csv'
    dest.write_text('old')
    def half(f):
        f.write(b'new, half written')
        raise RuntimeError('disk full')
    with pytest.raises(RuntimeError): atomic_write(dest, half)
    assert dest.read_text() == 'old'
    assert [p.name for p in tmp_path.iterdir()] == ['submission.csv']


def test_weights_equal_the_seeds_duplication():
    torch.manual_seed(1)
    ps = [torch.softmax(torch.randn(5, 10), 1) for _ in range(4)]
    torch.testing.assert_close(ensemble_preds(ps, [1, 2, 1, 3]), torch.stack(ps + ps[1:2] + ps[3:]*2).mean(0))
    with pytest.raises(PaddyError, match='positive'): ensemble_preds(ps, [1, 0, 1, 1])


def test_write_submission_aligns_and_rejects(data, tmp_path):
    ss = pd.read_csv(data/'sample_submission.csv')
    ss.iloc[::-1].to_csv(data/'sample_submission.csv', index=False)   # another order than the sorted test files
    try:
        ids = [f.name for f in get_test_files(data)]
        vocab = sorted(LABELS)
        probs = torch.eye(10)[[i % 10 for i in range(len(ids))]]
        sub = write_submission(probs, vocab, data, tmp_path/'s.csv')
        assert list(sub.image_id) == list(ss.image_id[::-1])             # sample_submission's order
        assert dict(zip(sub.image_id, sub.label)) == {i: vocab[k % 10] for k, i in enumerate(ids)}
        assert pd.read_csv(tmp_path/'s.csv').equals(sub)
        with pytest.raises(PaddyError, match='without a row'): write_submission(probs[1:], vocab, data, tmp_path/'x.csv', ids=ids[1:])
        with pytest.raises(PaddyError, match='more than once'): write_submission(probs, vocab, data, tmp_path/'x.csv', ids=ids[:-1]+ids[:1])
        with pytest.raises(PaddyError, match='labels not in'): write_submission(probs, ['rust']+vocab[1:], data, tmp_path/'x.csv')
        with pytest.raises(PaddyError, match='rows for unknown images'):
            write_submission(probs, vocab, data, tmp_path/'x.csv', ids=ids[:-1]+['999.jpg'])
        assert not (tmp_path/'x.csv').exists()
    finally: ss.to_csv(data/'sample_submission.csv', index=False)


def test_holdout_is_shared_and_never_trained_on(data, tmp_path):
    run = run_ensemble([A], data, tmp_path/'h', **FAST)
    res = load_member(next((tmp_path/'h'/'members').glob('*.pt')))
    assert res['holdout_ids'] == holdout_ids(data)
    assert len(res['holdout_preds']) == len(res['holdout_targs']) == len(holdout_ids(data))
    assert 0 <= res['record']['holdout_error'] <= 1


def test_unknown_arch_fails_before_anything_trains(data, tmp_path):
    logs = []
    with pytest.raises(PaddyError, match="timm has no model 'no_such_net'"):
        run_ensemble([A, Member('no_such_net', ('squish', 96), 32)], data, tmp_path/'u', log=logs.append, **FAST)
    assert logs == [] and not (tmp_path/'u').exists()


def test_holdout_ignores_row_order_and_new_images(data, tmp_path):
    trn = pd.read_csv(data/'train.csv')
    trn.iloc[::-1].to_csv(tmp_path/'train.csv', index=False)
    assert holdout_ids(tmp_path) == holdout_ids(data)
    extra = trn.assign(image_id=[f'new{i}.jpg' for i in range(len(trn))])
    pd.concat([extra, trn]).to_csv(tmp_path/'train.csv', index=False)
    assert [i for i in holdout_ids(tmp_path) if not i.startswith('new')] == holdout_ids(data)


class Noop(Callback):
    "A callback that could change training: it counts in the members' key (by its class and attributes)."
    def __init__(self, strength=1): self.strength = strength


def test_key_counts_every_learner_argument_and_callback(data, tmp_path):
    "Changing a loss (any non-plain kwarg) or a callback trains the member again; the same ones load it."
    from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
    out = tmp_path/'keys'
    st = lambda **kw: run_ensemble([A], data, out, **{**FAST, **kw}).status[0]
    assert st(loss_func=CrossEntropyLossFlat()) == 'trained'
    assert st(loss_func=LabelSmoothingCrossEntropyFlat(eps=0.1)) == 'trained'   # another loss: not the saved member
    assert st(loss_func=LabelSmoothingCrossEntropyFlat(eps=0.2)) == 'trained'   # the same class, another eps
    assert st(loss_func=LabelSmoothingCrossEntropyFlat(eps=0.1)) == 'loaded'    # a new object, equal: the saved member
    assert st(loss_func=CrossEntropyLossFlat(), cbs=Noop()) == 'trained'        # a callback counts
    assert st(loss_func=CrossEntropyLossFlat(), cbs=Noop(2)) == 'trained'       # and its attributes
    assert st(loss_func=CrossEntropyLossFlat(), cbs=[Noop(2), Interrupt(99)]) == 'loaded'  # in_member_key=False: left out
    assert len(list((out/'members').glob('*.pt'))) == 5


def test_unstable_kwarg_is_refused_before_training(data, tmp_path):
    logs = []
    with pytest.raises(PaddyError, match=r"run_ensemble\(loss_func=...\).*no name that stays the same"):
        run_ensemble([A], data, tmp_path/'lam', loss_func=lambda x, y: x.sum(), log=logs.append, **FAST)
    assert logs == [] and not (tmp_path/'lam').exists()


def test_valid_error_is_read_by_metric_name(data, tmp_path):
    from fastai.metrics import accuracy, error_rate
    run = run_ensemble([A], data, tmp_path/'m', metrics=[accuracy, error_rate], **FAST)  # error_rate not first
    res = load_member(next((tmp_path/'m'/'members').glob('*.pt')))
    assert run.status == ['trained'] and 0 <= res['record']['valid_error'] <= 1
    with pytest.raises(PaddyError, match="keep error_rate among them"):
        run_ensemble([A], data, tmp_path/'m2', metrics=accuracy, **FAST)


def test_pretrained_default_follows_the_data_and_is_logged(data, tmp_path):
    "pretrained=None: False on the demo data (whatever the machine), and the run says so."
    logs = []
    run_ensemble([A], data, tmp_path/'p', log=logs.append, **{**FAST, 'pretrained': None})
    assert 'pretrained=False (default_pretrained: the demo data)' in logs[0]
    logs = []
    run_ensemble([A], data, tmp_path/'p', log=logs.append, **FAST)
    assert 'pretrained=False (as given)' in logs[0]
