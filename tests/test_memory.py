"""paddy_lib.memory: peak_memory, free_learner, report_gpu, and find_accum's search (on a stand-in for `measure`)."""
import io, math
from contextlib import redirect_stdout
from pathlib import Path
import pytest, torch
from torch import nn
from fastai.basics import Learner, DataLoaders, DataLoader, Adam, MSELossFlat
import paddy_lib.memory as pm_mod
from paddy_lib.memory import (MiB, peak_memory, rss_mib, collect, free_learner, report_gpu, find_accum, BudgetError,
                              AccumChoice, _accums, HWM_OK)
from paddy_lib.core import is_oom
from paddy_lib.data import PaddyError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

@pytest.mark.parametrize('sampler', [None, True])
def test_peak_memory_cpu(sampler):
    with peak_memory('cpu', sampler=sampler) as pm:
        x = torch.ones(128*MiB//4); del x
    assert abs(pm.used - 128) < 8 and pm.end - pm.baseline < 8
    assert pm.method == ('sampled' if sampler or not HWM_OK else 'VmHWM')
    assert 'peak' in repr(pm) and 'MiB' in repr(pm)

def test_peak_memory_nested_and_decorator():
    @peak_memory('cpu')
    def f(mib): return torch.ones(mib*MiB//4).sum().item()
    with peak_memory('cpu') as outer:
        f(200)
        with peak_memory('cpu') as inner:
            y = torch.ones(50*MiB//4); del y
    assert abs(f.mem.used - 200) < 8 and abs(inner.used - 50) < 8
    assert abs(outer.used - 200) < 8  # the inner block's reset of the kernel's counter did not hide the earlier peak

def test_peak_memory_bad_device():
    with pytest.raises(PaddyError, match="only 'cpu' and 'cuda'"): peak_memory('meta')
    if not torch.cuda.is_available():
        with pytest.raises(PaddyError, match='CUDA is not available'): peak_memory('cuda')

def testis_oom():
    try: torch.empty(2**48, dtype=torch.uint8)  # 256 TiB: more than any machine maps
    except RuntimeError as e: assert is_oom(e)
    else: pytest.fail('a 256 TiB allocation succeeded')
    assert is_oom(torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB'))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError('mat1 and mat2 shapes cannot be multiplied')) and not is_oom(ValueError('x'))

def test_accums():
    assert _accums(64, 2) == [1, 2, 4, 8, 16, 32]
    assert _accums(48, 2) == [1, 2, 4, 8, 16]
    assert _accums(64, 1)[-1] == 64

def _learner(n=3072):
    "A learner whose weights, gradients and Adam state are big enough to see: 4 × 36 MiB for n=3072."
    x = torch.randn(64, n)
    dls = DataLoaders(DataLoader(list(zip(x, x)), bs=16), DataLoader(list(zip(x, x)), bs=16))
    learn = Learner(dls, nn.Linear(n, n), loss_func=MSELossFlat(), opt_func=Adam)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    return learn

def test_free_learner():
    free_learner(_learner())  # a first fit in a process leaves one-off costs (code, caches); measure the second
    collect(); base = rss_mib()
    learn = _learner()
    held = rss_mib()
    assert held - base > 100  # weights, gradients, Adam's two states
    free_learner(learn)
    assert learn.opt is None and learn.model is None and learn.dls is None and not learn.cbs
    assert rss_mib() - base < (held - base)/4  # back near the baseline (what it held: 4 × 36 MiB; RSS moves ~10s of MiB on its own)

def test_free_learner_keep_model():
    learn = _learner(64)
    free_learner(learn, keep_model=True)
    assert learn.opt is None and all(p.grad is None for p in learn.model.parameters())
    assert 'xb' not in learn.__dict__ and 'pred' not in learn.__dict__
    preds, _ = learn.get_preds()  # still usable for inference
    assert preds.shape == (len(learn.dls.valid_ds), 64)

def test_free_learner_bad_input():
    with pytest.raises(PaddyError, match='needs a fastai Learner'): free_learner(nn.Linear(2, 2))

@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU message')
def test_report_gpu_without_cuda():
    with redirect_stdout(io.StringIO()) as out: assert report_gpu() is None
    assert out.getvalue().startswith('No CUDA GPU here') and 'MiB of CPU memory' in out.getvalue()

# find_accum's search, on a stand-in for `measure` that returns a known peak curve (no training): these check the
# decisions (line, pick, confirmation, checks, out-of-memory recovery, the impossible case); the notebook runs the
# real thing.

def _fake_measure(curve, calls, oom_above=math.inf):
    "A `measure` whose peak at `eff_bs` items per micro-batch is `curve(m)`, running out of memory above `oom_above`."
    def measure(arch, size, accum=1, eff_bs=64, n_batches=None, grad_ckpt=False, **kwargs):
        m = eff_bs // accum
        calls.append((m, grad_ckpt))
        oom = 'OutOfMemoryError: CUDA out of memory' if m > oom_above else None
        peak = math.nan if oom else curve(m) * (0.7 if grad_ckpt else 1)
        return dict(arch=arch, size=size, accum=accum, bs=m, grad_ckpt=grad_ckpt, peak_mib=peak, baseline_mib=1000,
                    used_mib=peak-1000, end_mib=1000, oom=oom, batches=2, items_per_s=100/(1.3 if grad_ckpt else 1),
                    seconds=1.0, device='test')
    return measure

BASE = 20_000  # MiB: above this test process's own memory, so the CPU budget check passes

@pytest.fixture
def fake(monkeypatch):
    def install(curve, oom_above=math.inf):
        calls = []
        monkeypatch.setattr(pm_mod, 'measure', _fake_measure(curve, calls, oom_above))
        return calls
    return install

def _find(budget, margin=0, **kw): return find_accum('resnet18', 128, budget_mib=budget, path=Path('.'), trn_path='x',
                                                     device='cpu', margin=margin, verbose=False, **kw)

def test_find_accum_linear(fake):
    calls = fake(lambda m: BASE + 100*m)                      # the line is exact
    c = _find(BASE + 3500)                                    # 32 items fit, 64 don't
    assert isinstance(c, AccumChoice) and c == 2 and c.measured <= BASE + 3500
    assert [m for m, _ in calls] == [8, 16, 32]               # two probes, one confirmation
    assert math.isclose(c.fixed_mib, BASE) and math.isclose(c.per_item_mib, 100) and math.isclose(c.predicted, c.measured)
    assert not c.fitted and math.isclose(c.predict(1), BASE + 6400)
    assert c.probes.role.tolist() == ['probe', 'probe', 'confirm']

def test_find_accum_margin(fake):
    calls = fake(lambda m: BASE + 100*m)
    c = _find(BASE + 3500, margin=0.05)                       # 32 items peak at 23,200: under 23,500 but over 95% of it
    assert c == 4 and c.limit_mib == pytest.approx(0.95*(BASE + 3500)) and [m for m, _ in calls] == [8, 16, 32]
    with pytest.raises(PaddyError, match='margin'): _find(BASE, margin=1)

def test_find_accum_line_wrong(fake):
    calls = fake(lambda m: BASE + 100*m + (5000 if m >= 32 else 0))  # a jump the line can't see: the pick doesn't fit
    c = _find(BASE + 4000)                                    # the line (from 8 and 16) says 32 fits; it doesn't
    assert c == 4 and [m for m, _ in calls] == [8, 16, 32]    # came down to 16, already measured
    assert c.fitted

def test_find_accum_checks_close_calls(fake):
    calls = fake(lambda m: BASE + 100*m + (200 if m == 16 else 0))  # a bump at 16 tilts the line up
    c = _find(BASE + 3300)                                    # the line puts 32 just over (within tol): probed, it fits
    assert c == 2 and [m for m, _ in calls] == [8, 16, 32] and c.probes.role.iloc[-1] == 'check'

def test_find_accum_oom_recovery(fake):
    calls = fake(lambda m: BASE + 100*m, oom_above=16)
    c = _find(10**6)                                          # any peak fits; only running out of memory stops it
    assert c == 4 and [m for m, _ in calls] == [8, 16, 64, 32] and c.probes.oom.notna().sum() == 2
    calls = fake(lambda m: BASE + 100*m, oom_above=8)
    c = _find(10**6)                                          # the large probe runs out: 8 is the largest that fits
    assert c == 8 and [m for m, _ in calls] == [8, 16]

def test_find_accum_small_probe_too_big(fake):
    calls = fake(lambda m: BASE + 1000*m)
    c = _find(BASE + 3500)                                    # 8, 4 items: over; 2 items: 22,000 fits
    assert c == 32 and [m for m, _ in calls] == [8, 4, 2]

def test_find_accum_impossible(fake):
    calls = fake(lambda m: BASE + 1000*m)
    with pytest.raises(BudgetError, match=r'does not fit .* even with 2 items per micro-batch \(accum=32'):
        _find(BASE + 500)
    assert [m for m, _ in calls] == [8, 4, 2]

def test_find_accum_one_candidate(fake):
    calls = fake(lambda m: BASE + 100*m)
    assert _find(BASE + 1000, eff_bs=2) == 1 and [m for m, _ in calls] == [2]
    with pytest.raises(BudgetError, match='even with 2 items'): _find(BASE + 100, eff_bs=2)

def test_find_accum_grad_ckpt(fake):
    calls = fake(lambda m: BASE + 100*m)                      # checkpointing: 0.7 × the peak, 1.3 × the time
    c = _find(BASE + 3500, grad_ckpt=True)
    assert c == 2 and math.isclose(c.ckpt['saved_mib'], 0.3*(BASE + 3200)) and math.isclose(c.ckpt['time_ratio'], 1.3)
    assert c.ckpt['half_accum_fits'] is True and calls[-2:] == [(32, True), (64, True)]  # 0.7 × 26,400 < 23,500

def test_find_accum_bad_input():
    with pytest.raises(PaddyError, match='positive number'): _find(-1)
    with pytest.raises(PaddyError, match='positive number'): _find('16GB')
    with pytest.raises(PaddyError, match='items per optimizer step'): _find(BASE, eff_bs=1)
    with pytest.raises(PaddyError, match='two different micro-batch sizes'): _find(BASE, probe_bs=(8, 8))
    with pytest.raises(BudgetError, match='less than this process already holds'): _find(10)

@cuda
def test_peak_memory_cuda():
    with peak_memory('cuda') as pm:
        x = torch.ones(256*MiB//4, device='cuda'); del x
    assert abs(pm.peak_allocated - torch.cuda.memory_allocated()/MiB - 256) < 2
    assert pm.peak_reserved >= pm.peak_allocated and pm.overhead > 0 and pm.peak >= pm.peak_reserved

@cuda
def test_find_accum_cuda_fraction_restored(fake):
    fake(lambda m: 2000 + 10*m)
    before = getattr(torch.cuda, 'get_per_process_memory_fraction', lambda d: None)(torch.cuda.current_device())
    c = find_accum('resnet18', 128, budget_mib=4000, path=Path('.'), trn_path='x', verbose=False)
    assert c == 1
    after = getattr(torch.cuda, 'get_per_process_memory_fraction', lambda d: None)(torch.cuda.current_device())
    assert before == after

def test_measure_needs_enough_batches():
    from paddy_lib.data import paddy_data, smallest_label
    from paddy_lib.memory import measure
    path = paddy_data('demo')
    small = path/'train_images'/smallest_label(path)  # 10 images: 8 to train on
    with pytest.raises(PaddyError, match='fewer than the n_batches=3'):
        measure('resnet18', 64, accum=2, eff_bs=8, trn_path=small, path=path, device='cpu')
    with pytest.raises(PaddyError, match='accum is a positive int dividing eff_bs'):
        measure('resnet18', 64, accum=3, path=path)

def test_memory_anatomy():
    import timm
    from paddy_lib.memory import memory_anatomy
    m = timm.create_model('resnet18', num_classes=10)
    memory_anatomy(m, torch.randn(16, 3, 64, 64))  # a first forward pass leaves one-off costs (kernels, caches)
    collect(); base = rss_mib()
    a16, a32 = (memory_anatomy(m, torch.randn(bs, 3, 64, 64)) for bs in (16, 32))
    big = memory_anatomy(m, torch.randn(64, 3, 128, 128))  # activations large enough to tell from RSS's own wander
    collect(); kept = rss_mib() - base
    assert kept < big['activations']/4, (kept, big['activations'])  # all freed: no cycle through autograd's graph
    assert math.isclose(a16['optimizer state'], 2*a16['weights'], rel_tol=0.01) and a16['gradients'] == a32['gradients']
    assert math.isclose(a32['activations'], 2*a16['activations'], rel_tol=0.02) and a16['activations'] > 20
    assert m.training  # the model's mode is left as it was

def test_device_name_and_plot_peaks():
    import matplotlib; matplotlib.use('Agg')
    import pandas as pd
    from paddy_lib.memory import device_name, plot_peaks
    assert device_name('cpu').startswith('CPU: ') and f'({__import__("os").cpu_count()} cores)' in device_name('cpu')
    df = pd.DataFrame(dict(arch='m', size=128, accum=[1, 2, 4], peak_mib=[300., 200., 150.], oom=[None, None, None],
                           device='CPU: test'))
    ax = plot_peaks(df, budget_mib=250)
    assert list(ax.lines[0].get_ydata()) == [300., 200., 150.] and ax.lines[1].get_ydata()[0] == 250  # the budget line
    assert ax.get_title() == 'CPU: test'

def test_find_accum_limit_false_holds_nothing(fake, monkeypatch):
    "`limit=False` leaves a CUDA run unheld (the float budget once overwrote the flag, so it held every run)."
    fake(lambda m: BASE + 100*m)
    held = []
    monkeypatch.setattr(pm_mod, 'hold_to_budget', lambda b, d=None: held.append(b) or __import__('contextlib').nullcontext())
    kw = dict(budget_mib=BASE + 3500, path=Path('.'), trn_path='x', device='cuda:0', margin=0, verbose=False)
    assert find_accum('resnet18', 128, limit=False, **kw) == 2 and held == []
    assert find_accum('resnet18', 128, limit=True, **kw) == 2 and held == [BASE + 3500]

@pytest.fixture
def fake_card(monkeypatch):
    "A stand-in CUDA card of `total_mib` (no GPU needed): what `default_budget` and `hold_to_budget` read and set."
    fracs = []
    def install(total_mib, context_mib=300):
        monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda d=None: ((total_mib-context_mib)*MiB, total_mib*MiB))
        monkeypatch.setattr(torch.cuda, 'memory_reserved', lambda d=None: 0)
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda d=None: f'Card {total_mib} MiB')
        monkeypatch.setattr(torch.cuda, 'get_per_process_memory_fraction', lambda d=None: 1.0, raising=False)
        monkeypatch.setattr(torch.cuda, 'set_per_process_memory_fraction', lambda f, d=None: fracs.append(f))
        return fracs
    return install

def test_default_budget_rehearses_a_t4(fake_card, monkeypatch):
    "The budget is a T4's on a bigger card, the card's own on a smaller one, another GPU's when asked, the card's on Kaggle."
    from paddy_lib.memory import default_budget, GPU_BUDGETS
    from paddy_lib.data import PaddyError
    monkeypatch.delenv('PADDY_GPU', raising=False); monkeypatch.delenv('KAGGLE_KERNEL_RUN_TYPE', raising=False)
    t4 = 15_843_721_216 / 2**20
    assert GPU_BUDGETS['T4'] == t4 and GPU_BUDGETS['P100'] == 16_280
    fake_card(81_559)                                    # an 80 GB card: a T4, rehearsed
    assert default_budget('cuda:0') == t4
    assert default_budget('cuda:0', 'P100') == 16_280    # the seed's P100, asked for
    monkeypatch.setenv('PADDY_GPU', 'P100')
    assert default_budget('cuda:0') == 16_280 and default_budget('cpu') == 16_280
    monkeypatch.delenv('PADDY_GPU')
    fake_card(12_000)                                    # a card smaller than a T4: all of it
    assert default_budget('cuda:0') == 12_000
    assert default_budget('cpu') == t4
    fake_card(22_700)                                    # a Kaggle L4 session: the card it runs on is the target
    monkeypatch.setenv('KAGGLE_KERNEL_RUN_TYPE', 'Interactive')
    assert default_budget('cuda:0') == 22_700
    assert default_budget('cuda:0', 'T4') == t4         # unless a GPU is named
    with pytest.raises(PaddyError, match='use one of T4, P100'): default_budget('cuda:0', 'V100')

def test_hold_to_budget_warns_over_the_card(fake_card):
    from paddy_lib.memory import hold_to_budget
    fracs = fake_card(15_360, context_mib=300)
    with pytest.warns(UserWarning, match='more than this GPU has'):
        with hold_to_budget(16_280, 'cuda:0'): pass
    assert fracs == []                                   # nothing to hold: the card is the limit
    with hold_to_budget(12_000, 'cuda:0'): pass
    assert fracs == [pytest.approx((12_000-300)/15_360), 1.0]  # held to the budget less the context, then restored

# Moved from nbs/03_memory.ipynb (issue 14): the lesson keeps one check per claim; these are its corner cases and the
# process-level behaviour it used to show cell by cell.

def test_peak_memory_inner_peak_counts_in_outer():
    "A peak inside an inner block is the outer block's peak too (the inner one resets the kernel's counter)."
    with peak_memory('cpu') as outer:
        with peak_memory('cpu') as inner:
            x = torch.ones(400*MiB//4); del x
    assert abs(inner.used - 400) < 8 and abs(outer.used - 400) < 8

def test_peak_memory_slow_sampler_misses_a_short_peak():
    "The sampler sees what it samples: at a 2 s interval a shorter block gets only its first and last readings."
    with peak_memory('cpu', sampler=True, interval=2) as slow:
        x = torch.ones(256*MiB//4); del x
    assert slow.method == 'sampled' and slow.used < 16 and slow.seconds < 2
    if HWM_OK:  # the kernel's counter does not miss it
        with peak_memory('cpu', sampler=False) as exact:
            x = torch.ones(256*MiB//4); del x
        assert abs(exact.used - 256) < 8

def test_hold_to_budget_cpu_checks_entry_only():
    from paddy_lib.memory import hold_to_budget
    with hold_to_budget(rss_mib() + 1000, 'cpu'): x = torch.ones(2000*MiB//4); del x  # 2,000 MiB inside: not held
    with pytest.raises(BudgetError, match='less than this process already holds'): hold_to_budget(10, 'cpu').__enter__()

def test_fastai_head_needs_two_items():
    "Why find_accum's min_bs is 2: vision_learner's head ends in a Linear with two BatchNorm1d, which can't train on 1 item."
    from fastai.vision.learner import create_head
    head = create_head(2*384, 10)
    assert type(head[-1]) is nn.Linear and sum(isinstance(l, nn.BatchNorm1d) for l in head) == 2
    bn = nn.BatchNorm1d(4).train()
    with pytest.raises(ValueError, match='Expected more than 1 value per channel'): bn(torch.randn(1, 4))
    assert bn(torch.randn(2, 4)).shape == (2, 4)

def test_memory_budget_bad_input():
    from paddy_lib.memory import MemoryBudget
    with pytest.raises(PaddyError, match='positive number'): MemoryBudget(0)

@pytest.fixture(scope='module')
def demo():
    from fastai.vision.all import Resize
    from paddy_lib.data import paddy_data
    return dict(arch='convnext_atto', size=128, item=Resize(160, method='squish'), path=paddy_data('demo'))

def test_find_accum_recovers_from_real_oom(demo):
    "A callback asks the CPU allocator for 256 TiB above 16 items: two probes fail for real, are freed, the search goes on."
    import weakref
    from fastai.callback.core import Callback
    probed = []
    class Greedy(Callback):
        def before_fit(self): probed.append(weakref.ref(self.learn))  # every probe's learner, without keeping it alive
        def before_batch(self):
            if len(self.yb[0]) > 16: torch.empty(2**48, dtype=torch.uint8)
    collect(); base = rss_mib()
    c = find_accum(**demo, budget_mib=100_000, cbs=Greedy(), verbose=False)
    assert c == 4 and c.probes.micro_bs.tolist() == [8, 16, 64, 32]  # 16 items per micro-batch
    assert c.probes.oom.notna().sum() == 2 and "can't allocate memory" in c.probes.oom.dropna().iloc[0]
    collect()
    assert rss_mib() - base < (c.probes.peak_mib.max() - base)/4  # the failed probes' memory came back
    assert len(probed) == 4 and [r() for r in probed] == [None]*4  # no probe's learner survived, the failed ones included

def _short_run(path, bs=16):
    "A resnet18 trained on two micro-batches of `bs` images, as in a probe (the notebook's `short_run`)."
    from fastai.vision.all import Resize
    from paddy_lib.data import paddy_dls
    from paddy_lib.memory import _no_bar
    from paddy_lib.training import train, StopAfter
    item = Resize(160, method='squish')
    with _no_bar():
        learn, _ = train('resnet18', 128, item=item, path=path, eff_bs=bs, finetune=False, epochs=1, n_batches=2,
                         return_learner=True, dls=paddy_dls(path, 128, item=item, bs=bs, num_workers=0))
    learn.remove_cb(StopAfter)
    return learn

@pytest.fixture(scope='module')
def warm(demo):
    "A first short run in this process: it leaves one-off costs (code, caches) the measurements after it must not see."
    free_learner(_short_run(demo['path']))
    return demo

def test_lean_inference_path(warm, tmp_path):
    "export, free_learner, load_learner: inference holds the weights (resnet18: 43 MiB), not the training's memory."
    from fastai.learner import load_learner
    demo = warm
    collect(); base = rss_mib()
    learn = _short_run(demo['path']); trained = rss_mib() - base
    learn.export(tmp_path/'model.pkl'); free_learner(learn); del learn
    exported = rss_mib() - base
    inf = load_learner(tmp_path/'model.pkl'); loaded = rss_mib() - base
    tst = sorted((demo['path']/'test_images').iterdir())[:8]
    with inf.no_bar(): preds, _ = inf.get_preds(dl=inf.dls.test_dl(tst, num_workers=0))
    assert preds.shape[0] == 8
    del inf, preds; collect(); freed = rss_mib() - base
    assert exported < trained/5 and freed < trained/5 and loaded < trained/4, (trained, exported, loaded, freed)

def test_a_kept_loss_holds_memory(warm):
    "A loss computed outside `fit` holds its autograd graph: free_learner can't free it, `del loss` does."
    demo = warm
    collect(); base = rss_mib()
    learn = _short_run(demo['path'])
    xb, yb = learn.dls.one_batch()
    loss = learn.loss_func(learn.model(xb), yb)
    free_learner(learn); del learn, xb, yb
    held = rss_mib() - base
    del loss; collect()
    released = rss_mib() - base
    assert held > 100 and released < held/4, (held, released)

def test_grad_checkpointing_keeps_fewer_activations():
    import timm
    from paddy_lib.memory import saved_activations
    model = timm.create_model('convnext_atto', num_classes=10)
    xb = torch.randn(32, 3, 128, 128)
    plain = saved_activations(model, xb)
    model.set_grad_checkpointing(True)
    assert saved_activations(model, xb) < 0.5*plain

def test_memory_anatomy_matches_profiler(tmp_path):
    "memory_anatomy's parts against PyTorch's profiler at the peak of one Adam step of 32 items (after a first step)."
    import json, warnings, timm, numpy as np, torch.nn.functional as F
    from torch.profiler import profile, ProfilerActivity
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX  # the timeline's column order (a private table)
    from paddy_lib.memory import memory_anatomy
    model = timm.create_model('convnext_atto', num_classes=10)
    xb, yb = torch.randn(32, 3, 128, 128), torch.randint(0, 10, (32,))
    est = memory_anatomy(model, xb)
    opt = torch.optim.Adam(model.parameters())
    def step(): F.cross_entropy(model(xb), yb).backward(); opt.step(); opt.zero_grad(set_to_none=False)
    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof: step()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        prof.export_memory_timeline(str(tmp_path/'t.json'), device='cpu')
    sizes = np.array(json.loads((tmp_path/'t.json').read_text())[1])[:, 1:]/MiB
    cols = [str(c.name).lower() if c else 'unknown' for c in _CATEGORY_TO_INDEX]
    peak = dict(zip(cols, sizes[sizes.sum(1).argmax()]))
    for ours, theirs in [('weights', 'parameter'), ('gradients', 'gradient'), ('optimizer state', 'optimizer_state'),
                         ('input batch', 'input')]:
        assert abs(est[ours] - peak[theirs]) < 0.5, (ours, est[ours], peak[theirs])
    assert abs(est['total'] - sum(peak.values())) < 0.05*est['total'], (est['total'], sum(peak.values()))
