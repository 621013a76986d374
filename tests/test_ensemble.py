"What a notebook can't show about `run_ensemble`: interruption and resume, out-of-memory retries, atomic files, stable keys."
import json, os, subprocess, sys, time
from pathlib import Path

import pandas as pd, pytest, torch
from fastai.callback.core import Callback

from paddy_lib.core import PaddyError
from paddy_lib.data import make_demo_paddy, get_test_files, LABELS
from paddy_lib.ensemble import (Member, FULL_CONFIGS, DEMO_CONFIGS, run_ensemble, ensemble_preds, write_submission, atomic_write,
                                member_key, member_file, data_fingerprint, holdout_ids, HoldoutSplitter, load_member,
                                load_members, as_member, stable_repr, save_member)

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
    # the report's two ensemble rows, recomputed by hand from the saved hold-out predictions
    ps, t = torch.stack([r['holdout_preds'] for _, r in run.done]), run.holdout_targs
    w = torch.tensor([m.weight for m, _ in run.done])
    err = lambda p: (p.argmax(1) != t).float().mean().item()
    assert run.holdout_report().holdout_error.iloc[-2:].tolist() == pytest.approx([err(ps.mean(0)), err((ps*w[:, None, None]).sum(0))])


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
    assert run.left_out == [(1, 'test_resnet squish 96 @48', 'out of memory even at the largest accum (max_accum=4)')]


def test_tiny_budget_is_a_budget_error_not_a_crash(data, tmp_path):
    "A budget below what the process already holds: a BudgetError (find_accum's, hold_to_budget's) skips each member."
    logs = []
    run = run_ensemble([Member('test_resnet', ('squish', 96), 32), A], data, tmp_path/'budget', budget_mib=10,
                       log=logs.append, **FAST)
    assert run.status == ['failed', 'failed']
    assert sum(l.startswith("  doesn't fit") and 'less than this process already holds' in l for l in logs) == 2
    assert logs[-1].startswith("left out of the ensemble: member 1 (test_resnet squish 96 @32): doesn't fit")
    with pytest.raises(PaddyError, match='No member of the ensemble finished'): run.probs()


@pytest.mark.skipif(torch.cuda.is_available(), reason='MemoryBudget holds CPU runs; on CUDA the budget is the allocator limit')
def test_budget_forces_a_real_out_of_memory_and_a_retry(data, tmp_path):
    "No stand-in: a member over a CPU budget (MemoryBudget) runs out of memory, is freed, retried at a larger accum, done."
    from paddy_lib.memory import measure
    big = Member('convnext_atto', ('squish', 160), 128, accum=1)   # activations dominate: the peak falls with accum
    pk = {a: measure(big.arch, big.size, accum=a, item=big.resize, eff_bs=32, path=data, device='cpu')['peak_mib']
          for a in (1, 4)}
    assert pk[1] > pk[4]
    logs = []
    budget = (pk[1] + pk[4])/2
    run = run_ensemble([big], data, tmp_path/'budget_oom', budget_mib=budget, log=logs.append, **{**FAST, 'eff_bs': 32})
    assert run.status == ['trained'], logs
    assert logs[0].endswith(f'pretrained=False (as given), budget {budget:,.0f} MiB')
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


def test_weights_equal_road_to_the_tops_duplication():
    torch.manual_seed(1)
    ps = [torch.softmax(torch.randn(5, 10), 1) for _ in range(4)]
    torch.testing.assert_close(ensemble_preds(ps, [1, 2, 1, 3]), torch.stack(ps + ps[1:2] + ps[3:]*2).mean(0))
    torch.testing.assert_close(ensemble_preds([(p, None) for p in ps]), torch.stack(ps).mean(0))  # `tta`'s pairs; no weights: the mean
    with pytest.raises(PaddyError, match='positive'): ensemble_preds(ps, [1, 0, 1, 1])
    with pytest.raises(PaddyError, match='2 weights for 4 members'): ensemble_preds(ps, [1, 2])
    with pytest.raises(PaddyError, match='different shapes'): ensemble_preds([torch.zeros(3, 10), torch.zeros(4, 10)])
    with pytest.raises(PaddyError, match='no predictions'): ensemble_preds([])


# --- members as data ---

def test_bad_member_fails_when_made():
    for kw, says in [(dict(item=('squash', 480)), 'method one of squish, crop, pad'), (dict(size=0), 'size=0'),
                     (dict(weight=-1), 'a weight is a positive number'), (dict(accum=1.5), 'accum is a positive int'),
                     (dict(accum=True), 'accum is a positive int'), (dict(kwargs=[1]), 'kwargs a dict')]:
        with pytest.raises(PaddyError, match=says): Member('resnet18', **kw)
    with pytest.raises(PaddyError, match='timm model name'): Member('')


def test_member_item_is_fastais_resize():
    "(method, size) is `Resize(size, method=method)`; a JSON list becomes a tuple; a square pair is one int."
    m = Member('vit_large_patch16_224', ('crop', [640, 480]), 224, weight=2)
    assert m.item == ('crop', (640, 480)) and (m.resize.size, m.resize.method) == ((480, 640), 'crop')  # fastai keeps (w, h)
    r = Member('x', ('squish', 480)).resize
    assert (r.size, r.method) == ((480, 480), 'squish')
    assert Member('x', ('squish', (96, 96)), (64, 48)).name == 'x squish 96 @64x48'


def test_members_from_dicts_tuples_and_files(tmp_path):
    assert as_member(dict(arch='resnet18', item=['squish', 96], size=64)) == Member('resnet18', ('squish', 96), 64)
    assert as_member(('resnet18', ('squish', 96), 64)) == Member('resnet18', ('squish', 96), 64)
    with pytest.raises(PaddyError, match=r'Unknown member field\(s\) lr'): as_member(dict(arch='resnet18', lr=0.1))
    with pytest.raises(PaddyError, match="Can't make an ensemble member"): as_member(42)
    (tmp_path/'ens.yaml').write_text("- {arch: resnet18, item: [squish, 96], size: 64}\n"
                                     "- {arch: convnext_atto, item: [crop, [128, 96]], size: 64, weight: 2}\n")
    assert [m.name for m in load_members(tmp_path/'ens.yaml')] == ['resnet18 squish 96 @64', 'convnext_atto crop 128x96 @64']
    (tmp_path/'ens.json').write_text(json.dumps({'members': [dict(arch='resnet18')]}))
    assert load_members(tmp_path/'ens.json') == [Member('resnet18')]
    (tmp_path/'bad.json').write_text('{"arch": "resnet18"')
    with pytest.raises(PaddyError, match='is not valid JSON'): load_members(tmp_path/'bad.json')
    (tmp_path/'empty.json').write_text('[]')
    with pytest.raises(PaddyError, match='non-empty list of members'): load_members(tmp_path/'empty.json')
    with pytest.raises(PaddyError, match='does not exist'): load_members(tmp_path/'nope.json')


def test_full_configs_are_road_to_the_tops_eight():
    from paddy_lib.training import timm_arch
    assert len(FULL_CONFIGS) == 8 and [m.weight for m in FULL_CONFIGS if m.arch.startswith('vit')] == [2., 2.]
    assert {m.arch for m in FULL_CONFIGS} == {'convnext_large_in22k', 'vit_large_patch16_224', 'swinv2_large_window12_192_22k',
                                              'swin_large_patch4_window7_224'}
    assert {m.accum for m in FULL_CONFIGS} == {None}                       # left to find_accum
    for m in FULL_CONFIGS + DEMO_CONFIGS: timm_arch(m.arch, verbose=False)  # timm knows every arch (old names mapped)


# --- keys and saved files ---

def test_member_key_counts_the_spec_not_the_weight():
    ctx = dict(data='d', epochs=3, lr=0.01, eff_bs=64)
    m = DEMO_CONFIGS[0]
    assert member_key(m, **ctx) == member_key(Member(**{**m.spec(), 'item': list(m.item)}), **ctx)  # equal specs, equal keys
    assert member_key(m, **ctx) == member_key(Member(**{**m.spec(), 'weight': 5}), **ctx)           # the weight doesn't count
    assert member_key(m, **ctx) != member_key(m, **{**ctx, 'epochs': 4})
    assert member_key(m, **ctx) != member_key(Member(**{**m.spec(), 'size': 48}), **ctx)


def test_stable_repr_describes_losses_by_class_and_attributes():
    from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
    ctx, m = dict(data='d', epochs=3), DEMO_CONFIGS[0]
    keys = {name: member_key(m, **ctx, loss_func=stable_repr(f)) for name, f in
            [('ce', CrossEntropyLossFlat()), ('ls 0.1', LabelSmoothingCrossEntropyFlat(eps=0.1)),
             ('ls 0.2', LabelSmoothingCrossEntropyFlat(eps=0.2)), ('fn', torch.nn.functional.cross_entropy)]}
    assert len(set(keys.values())) == 4                                     # eps 0.1 and 0.2 differ: attributes count
    assert member_key(m, **ctx, loss_func=LabelSmoothingCrossEntropyFlat(eps=0.1)) == keys['ls 0.1']  # a new, equal object
    with pytest.raises(PaddyError, match='no name that stays the same'): member_key(m, **ctx, loss_func=lambda x, y: 0)


def test_saved_member_round_trips_atomically(tmp_path):
    res = dict(record=dict(arch='x', holdout_error=0.25), test_preds=torch.rand(4, 10), test_ids=['a.jpg']*4)
    fn = save_member(res, tmp_path/'members'/'x-0.pt')
    back = load_member(fn)
    assert back['record'] == res['record'] and torch.equal(back['test_preds'], res['test_preds'])
    assert [p.name for p in (tmp_path/'members').iterdir()] == ['x-0.pt']  # no temporary file left behind


def test_same_member_makes_the_same_predictions_in_another_folder(data, tmp_path):
    "Seeded from its key: the same member, data and settings in another folder reproduce it to the last bit."
    for d in ('one', 'two'): run_ensemble([A], data, tmp_path/d, **FAST)
    a, b = [load_member(next((tmp_path/d/'members').glob('*.pt'))) for d in ('one', 'two')]
    assert a['record']['key'] == b['record']['key']
    assert torch.equal(a['holdout_preds'], b['holdout_preds']) and torch.equal(a['test_preds'], b['test_preds'])


def test_member_without_accum_gets_find_accums(data, tmp_path):
    logs = []
    run = run_ensemble([Member('test_resnet', ('squish', 96), 32)], data, tmp_path/'fa', budget_mib=1e6, log=logs.append, **FAST)
    assert run.table.accum.tolist() == [1]                                  # a huge budget: no accumulation needed
    assert any(l.startswith('  accum=1 (find_accum, budget') for l in logs)


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
        with pytest.raises(PaddyError, match='for 8 test images and 10 labels'):
            write_submission(probs[:, :9], vocab, data, tmp_path/'x.csv')
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
    assert pd.read_csv(tmp_path/'h'/'records.csv').holdout_error.round(6).tolist() == run.table.holdout_error.round(6).tolist()


def test_unknown_arch_fails_before_anything_trains(data, tmp_path):
    logs = []
    with pytest.raises(PaddyError, match="timm has no model 'no_such_net'"):
        run_ensemble([A, Member('no_such_net', ('squish', 96), 32)], data, tmp_path/'u', log=logs.append, **FAST)
    assert logs == [] and not (tmp_path/'u').exists()


def test_bad_arguments_fail_before_anything_is_logged_or_written(data, tmp_path):
    logs, nowhere = [], tmp_path/'nowhere'
    vit = Member('vit_tiny_patch16_224', ('squish', 96), 64, kwargs=dict(img_sz=64))
    for bad, says in [(dict(epochs=0), 'at least 1'), (dict(epochs=2.5), 'at least 1'), (dict(budget_mib=-5), 'positive number of MiB'),
                      (dict(configs=[vit]), 'does not accept'), (dict(configs=[]), 'no members given')]:
        with pytest.raises(PaddyError, match=says):
            run_ensemble(**{'configs': [A], 'path': data, 'out_dir': nowhere, 'log': logs.append, **FAST, **bad})
    assert logs == [] and not nowhere.exists()


def test_holdout_share_and_seed(tmp_path):
    pd.DataFrame(dict(image_id=[f'{i:06d}.jpg' for i in range(1000)], label='blast')).to_csv(tmp_path/'train.csv', index=False)
    hold = holdout_ids(tmp_path)
    assert 0.17 < len(hold)/1000 < 0.23 and holdout_ids(tmp_path) == hold and holdout_ids(tmp_path, seed=1) != hold
    with pytest.raises(PaddyError, match='between 0 and 1'): holdout_ids(tmp_path, pct=20)


def test_each_members_split_leaves_the_holdout_out(data):
    "Two members' splits: neither side holds a held-out image, and their validation sets differ (a split per member)."
    from fastai.vision.all import Resize
    from paddy_lib.data import paddy_dls
    hold = holdout_ids(data)
    n = len(pd.read_csv(data/'train.csv'))
    splits = [paddy_dls(data, 32, item=Resize(32), splitter=HoldoutSplitter(hold), num_workers=0) for _ in range(2)]
    for d in splits:
        seen = {Path(o).name for o in d.train_ds.items + d.valid_ds.items}
        assert not seen & set(hold) and len(seen) == n - len(hold)
    assert set(splits[0].valid_ds.items) != set(splits[1].valid_ds.items)
    tr, va = HoldoutSplitter(hold, seed=0)([f'{i}.jpg' for i in range(10)])
    assert (tr, va) == HoldoutSplitter(hold, seed=0)([f'{i}.jpg' for i in range(10)])   # seeded: the same split


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


class _Slow(Callback):
    "Make every fit take at least a second (not part of the member key)."
    in_member_key = False
    def before_fit(self): time.sleep(1)

def test_time_limit_starts_no_member_that_cannot_finish(data, tmp_path):
    "Half a second allowed, a member takes over one: the first trains, the second is not started, named, and resumable."
    logs, out = [], tmp_path/'limit'
    run = run_ensemble([A, B], data, out, cbs=_Slow(), time_limit=0.5/3600, log=logs.append, **FAST)
    assert run.status == ['trained', 'not started']
    assert [(i, why.split(':')[0]) for i, _, why in run.left_out] == [(2, 'not started')]
    assert 'would end after the time limit' in run.reasons[2] and any('left out of the ensemble: member 2' in l for l in logs)
    sub = run.write_submission(tmp_path/'sub.csv')  # from the member that finished
    assert len(sub) == len(get_test_files(data))
    assert run_ensemble([A, B], data, out, cbs=_Slow(), log=lambda l: None, **FAST).status == ['loaded', 'trained']
