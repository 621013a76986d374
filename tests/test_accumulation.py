"GradAccum and StepSchedule's corner cases, moved out of 01_accumulation: errors, restarts, samplers, fp16 overflow."
import itertools, warnings
import pytest, torch, torch.nn.functional as F
from torch import nn
from torch.amp import GradScaler, autocast
from torch.utils.data import TensorDataset, DataLoader as TorchDL, BatchSampler, SequentialSampler
from fastai.basics import Learner, DataLoaders, DataLoader, MSELossFlat, SGD, Callback, CancelFitException
from fastai.callback.fp16 import MixedPrecision, AMPMode
from fastai.callback.training import GradientAccumulation
from fastai.torch_core import find_bs
from paddy_lib.data import PaddyError
from paddy_lib.accumulation import GradAccum, StepSchedule, _batch_sizes, _n_steps

g = torch.Generator().manual_seed(0)
X = torch.randn(256, 8, generator=g)
Y = X@torch.randn(8, 1, generator=g) + 0.1*torch.randn(256, 1, generator=g)

def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

class StepGrads(Callback):
    "Each applied optimizer step's gradient and items, the lr, and the gradient found at `before_fit`."
    order = MixedPrecision.order+2
    def before_fit(self):
        self.grads, self.items, self.lrs, self.n = [], [], [], 0
        self.stale = sum(p.grad.abs().sum().item() for p in self.model.parameters() if p.grad is not None)
    def after_loss(self):
        if self.training: self.n += find_bs(self.yb)
    def before_step(self):
        self.grads.append(torch.cat([p.grad.flatten().clone() for p in self.model.parameters()]))
        self.items.append(self.n); self.lrs.append(self.opt.hypers[-1]['lr']); self.n = 0

def learner(bs, cbs=(), n=256, trn=None):
    ds = TensorDataset(X[:n], Y[:n])
    trn = trn or DataLoader(ds, bs=bs, shuffle=False, drop_last=False)
    return Learner(DataLoaders(trn, TorchDL(ds, batch_size=64)), mlp(), loss_func=MSELossFlat(), opt_func=SGD, lr=0.01,
                   cbs=[StepGrads(), *cbs])

def fit(learn, epochs=1, how='fit', **kw):
    with learn.no_bar(), learn.no_logging(): getattr(learn, how)(epochs, **kw)
    return learn

def rel(a, b): return ((a-b).abs().max()/b.abs().max()).item()
def max_rel(a, b): return max(rel(x, y) for x, y in zip(a.step_grads.grads, b.step_grads.grads, strict=True))
def copy_weights(dst, src):
    with torch.no_grad():
        for p, w in zip(dst.model.parameters(), src): p.copy_(w)

@pytest.mark.parametrize('bad', [0, -64, 64.0, '64', True, None])
def test_eff_bs_must_be_a_positive_int(bad):
    with pytest.raises(PaddyError, match=r"GradAccum\(.*\): `eff_bs` counts items per step, e.g. GradAccum\(64\)"): GradAccum(bad)

def test_warns_once_when_a_batch_exceeds_eff_bs():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn = fit(learner(32, [GradAccum(2)]), 2)
        fit(learn)
    msgs = [str(w.message) for w in caught if 'GradAccum' in str(w.message)]
    assert len(msgs) == 2 and msgs[0].startswith('GradAccum(2) with batches of 32: nothing is accumulated')  # once per fit (3 epochs, 2 fits)
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # bs == eff_bs (accum=1 in `train`): silent, and no fastai shadowing warning
        fit(learner(64, [GradAccum(64), StepSchedule(64)]))

def test_lesson_loop_dividing_by_accum_iter_is_not_the_mean():
    "The `accum_iter` loop weights micro-batches equally: wrong for 48+16 and for a short last group; GradAccum is exact."
    def accum_iter_loop(idxs, accum_iter):
        model, steps = mlp(), []
        for i, b in enumerate(idxs):
            (F.mse_loss(model(X[b]), Y[b]) / accum_iter).backward()
            if (i+1) % accum_iter == 0 or i+1 == len(idxs):
                steps.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
                with torch.no_grad():
                    for p in model.parameters(): p -= 0.01*p.grad; p.grad = None
        return steps
    big, short = accum_iter_loop(chunks(200, [64]), 1), accum_iter_loop(chunks(200, [16]), 4)
    assert abs(rel(short[-1], big[-1]) - 0.75) < 1e-4   # the last group's 8 items divided by 4: a quarter of the mean
    uneven = chunks(256, [48, 16])
    assert max(rel(a, b) for a, b in zip(accum_iter_loop(uneven, 2), accum_iter_loop(chunks(256, [64]), 1))) > 0.1
    ds = TensorDataset(X[:256], Y[:256])
    ours = fit(learner(None, [GradAccum(64)], trn=TorchDL(ds, batch_sampler=uneven)))
    assert max_rel(ours, fit(learner(64))) < 1e-5 and ours.grad_accum.sizes == [64]*4

def test_fastai_trap_gradient_accumulation_of_accum():
    "`GradientAccumulation(accum)` with bs=64//accum: a step per batch, each gradient bs/accum times the mean."
    trap, plain = fit(learner(32, [GradientAccumulation(2)])), fit(learner(32))
    assert trap.step_grads.items == [32]*8
    assert abs((trap.step_grads.grads[0].norm()/plain.step_grads.grads[0].norm()).item() - 16) < 1e-3

def test_fastai_leftover_is_added_to_the_next_fit():
    "fastai's second fit steps on its true gradient plus the first fit's leftover, exactly."
    fa = fit(learner(32, [GradientAccumulation(64)], n=224))
    left = torch.cat([p.grad.flatten().clone() for p in fa.model.parameters()])
    w0 = [p.detach().clone() for p in fa.model.parameters()]
    fit(fa)
    clean = learner(64, n=224); copy_weights(clean, w0); fit(clean)
    assert torch.allclose(fa.step_grads.grads[0], clean.step_grads.grads[0] + left, atol=1e-6)

def test_flushes_and_leaves_no_gradient():
    ga = fit(learner(32, [GradAccum(64)], n=224))
    assert ga.grad_accum.sizes == [64, 64, 64, 32]
    assert sum(p.grad.abs().sum().item() for p in ga.model.parameters() if p.grad is not None) == 0

class StopAt(Callback):
    def __init__(self, n): self.n = n
    def after_batch(self):
        if self.training and self.iter+1 == self.n: raise CancelFitException()

@pytest.mark.parametrize('cb,clean', [(lambda: GradAccum(64), True), (lambda: GradientAccumulation(64), False)])
def test_interrupted_fit_leaves_nothing_for_the_next(cb, clean):
    "A fit cancelled mid-group (32 items in .grad): GradAccum's next first step is clean, fastai's is not."
    learn = learner(32, [cb()], n=224)
    fit(learn, cbs=StopAt(3))
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    fit(learn)
    ref = learner(64, n=224); copy_weights(ref, w0); fit(ref)
    assert learn.step_grads.stale > 0
    assert (rel(learn.step_grads.grads[0], ref.step_grads.grads[0]) < 1e-5) == clean

def test_logged_loss_is_the_true_loss():
    class LogLoss(Callback):
        order = 100
        def before_fit(self): self.losses = []
        def after_batch(self):
            if self.training: self.losses.append(self.learn.loss.item())
    logged = fit(learner(16, [GradAccum(64), LogLoss()]))
    m0 = mlp()   # the first 4 micro-batches run at the initial weights
    true = [F.mse_loss(m0(X[i:i+16]), Y[i:i+16]).item() for i in range(0, 64, 16)]
    assert torch.allclose(torch.tensor(logged.log_loss.losses[:4]), torch.tensor(true), atol=1e-6)

def test_schedule_fallback_for_an_unsized_sampler():
    "A batch sampler GradAccum can't size in advance: groups of equal length still get the big batch's lrs."
    ds = TensorDataset(X, Y)
    fb = learner(None, [GradAccum(64), StepSchedule(64)], trn=TorchDL(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 16, drop_last=False)))
    fit(fb, 2, 'fit_one_cycle', lr_max=0.05)
    big = fit(learner(64), 2, 'fit_one_cycle', lr_max=0.05)
    assert fb.step_schedule.n_steps is None
    assert max(abs(a-b) for a, b in zip(fb.step_grads.lrs, big.step_grads.lrs, strict=True)) < 1e-12

def test_batch_sizes_and_steps():
    ds = TensorDataset(X[:200], Y[:200])
    assert _batch_sizes(DataLoader(ds, bs=64, drop_last=False)) == [64, 64, 64, 8]
    assert _batch_sizes(DataLoader(ds, bs=64, drop_last=True)) == [64, 64, 64]
    assert _batch_sizes(TorchDL(ds, batch_size=48)) == [48, 48, 48, 48, 8]
    assert _batch_sizes(TorchDL(ds, batch_sampler=[[0, 1], [2]])) == [2, 1]
    assert _batch_sizes(TorchDL(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 16, drop_last=False))) is None
    assert _n_steps([16]*13, 64) == 4 and _n_steps([48]*4, 64) == 2 and _n_steps([32]*260, 64) == 130

class DeviceMixedPrecision(MixedPrecision):
    "fastai's MixedPrecision with CPU autocast and GradScaler; `cast=False` keeps float32 maths."
    def __init__(self, amp_mode='fp16', cast=True, **kw): super().__init__(amp_mode, **kw); self.cast = cast
    def before_fit(self):
        dev = next(self.model.parameters()).device.type
        dtype = torch.float16 if self.amp_mode == AMPMode.FP16 else torch.bfloat16
        self.autocast = autocast(dev, dtype=dtype, enabled=self.cast)
        self.learn.scaler, self.scales = GradScaler(dev, enabled=dtype == torch.float16, **self.kwargs), []

def chunks(n, sizes):
    "Index lists of consecutive micro-batches of `sizes` (cycled), the last cut short at `n`."
    out, i = [], 0
    for s in itertools.cycle(sizes):
        if i >= n: return out
        out.append(list(range(i, min(i+s, n)))); i += s

@pytest.mark.parametrize('sizes,n,big_bs', [([48, 16], 256, 64), ([48], 192, 96), ([16], 200, 64)])
def test_exact_under_loss_scaling(sizes, n, big_bs):
    "Loss scaling by 2**12 in float32 maths: the scale never reaches the gradient, and accumulation stays exact."
    mp = lambda: DeviceMixedPrecision(cast=False, init_scale=2.**12)
    trn = TorchDL(TensorDataset(X[:n], Y[:n]), batch_sampler=chunks(n, sizes))
    acc = fit(learner(None, [GradAccum(64), mp()], n=n, trn=trn))
    assert max_rel(acc, fit(learner(big_bs, [mp()], n=n))) < 1e-5

def test_fp16_overflow_skips_the_whole_group():
    class ScaleLog(Callback):
        order = MixedPrecision.order+1
        def before_fit(self): self.log = []
        def after_step(self): self.log.append(self.learn.scaler.get_scale())
    ovf = learner(16, [GradAccum(32), DeviceMixedPrecision(init_scale=2.**17), sl := ScaleLog()])
    fit(ovf)
    assert ovf.grad_accum.sizes == [32]*8 and 0 < len(ovf.step_grads.grads) < 8
    skipped = sum(b < a for a, b in zip([2.**17, *sl.log], sl.log))   # the scaler halves its scale at each skip
    assert len(ovf.grad_accum.sizes) == len(ovf.step_grads.grads) + skipped

def test_must_run_before_mixed_precision():
    class LateGradAccum(GradAccum): order = MixedPrecision.order+1
    with pytest.raises(RuntimeError, match='already been called'):
        fit(learner(16, [LateGradAccum(64), DeviceMixedPrecision(cast=False)]))
