#!/usr/bin/env python
"""Gradient accumulation: exactness and overhead, in one run.

    python bench/accumulation.py            # writes bench/results/accumulation.{txt,csv,png}

(a) At every optimizer step of one epoch, the accumulated gradient of `paddy_lib.accumulation.GradAccum` or of fastai's
    `GradientAccumulation` against the gradient of one big batch of exactly that step's items at the same weights:
    largest relative difference max|g - g_big| / max|g_big|, and the worst norm ratio |g|/|g_big|. Small CNN without
    BatchNorm, float32.
(b) Training throughput (items/s over whole training epochs, by wall time and by process CPU time) at the same
    micro-batch size, with and without accumulation: interleaved repeats, medians and ratios (the overhead).
"""
import argparse, copy, csv, os, platform, statistics, sys, time, warnings
from pathlib import Path
import torch, fastai
from torch import nn
from fastai.basics import Learner, DataLoaders, DataLoader, Callback, CrossEntropyLossFlat, SGD, find_bs
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.training import GradientAccumulation

ROOT = Path(__file__).resolve().parents[1]
from paddy_lib.accumulation import GradAccum
from paddy_lib.core import device_name

def tiny_cnn(seed=1):
    "A small CNN without BatchNorm: 3x32x32 images -> 10 classes."
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))

def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)

def chunks(n, sizes):
    "Index lists of consecutive batches of the given sizes (cycled), the last one cut short at `n`."
    out, i, k = [], 0, 0
    while i < n:
        s = sizes[k % len(sizes)]; out.append(list(range(i, min(i+s, n)))); i += s; k += 1
    return out

class StepGrads(Callback):
    "At each optimizer step, compare the gradient with one big batch of the step's items at the same weights."
    order = MixedPrecision.order+2          # after any unscaling, before the step
    def before_fit(self): self.rows,self.xs,self.ys = [],[],[]
    def after_loss(self):
        if self.training: self.xs.append(self.xb[0].detach()); self.ys.append(self.yb[0].detach())
    def before_step(self):
        g = torch.cat([p.grad.flatten().double().cpu() for p in self.model.parameters()])
        ref = copy.deepcopy(self.model); ref.zero_grad(set_to_none=True)
        x, y = torch.cat(self.xs), torch.cat(self.ys)
        self.loss_func(ref(x), y).backward()
        gb = torch.cat([p.grad.flatten().double().cpu() for p in ref.parameters()])
        self.rows.append(dict(items=len(x), rel=rel_diff(g, gb), norm=(g.norm()/gb.norm()).item()))
        self.xs, self.ys = [], []

class TrainTime(Callback):
    "Wall and process-CPU time of the training part of each epoch."
    order = 100
    def __init__(self, dev): self.dev, self.wall, self.cpu = dev, [], []
    def _sync(self):
        if self.dev.type == 'cuda': torch.cuda.synchronize(self.dev)
    def before_train(self): self._sync(); self.t0, self.c0 = time.perf_counter(), time.process_time()
    def after_train(self):
        self._sync(); self.wall.append(time.perf_counter()-self.t0); self.cpu.append(time.process_time()-self.c0)

def learner(x, y, sizes, cbs, dev, lr=0.01):
    ds = list(zip(x, y))
    if len(sizes) == 1: trn = DataLoader(ds, bs=sizes[0], shuffle=False, drop_last=False, device=dev)
    else:
        from torch.utils.data import DataLoader as TorchDL, TensorDataset
        trn = TorchDL(TensorDataset(x, y), batch_sampler=chunks(len(x), sizes))
    dls = DataLoaders(trn, DataLoader(ds[:8], bs=8, device=dev))
    return Learner(dls, tiny_cnn().to(dev), loss_func=CrossEntropyLossFlat(), opt_func=SGD, lr=lr, cbs=cbs)

def quiet_fit(learn, epochs=1):
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit(epochs)
    return learn

def rel_diff(a, b): return ((a-b).abs().max()/b.abs().max()).item()

def exactness(dev):
    rows = []
    cases = [('even 16x4', 256, [16]), ('uneven 48+16', 256, [48, 16]),
             ('48 for 64 (96/step)', 192, [48]), ('16s, short last group (200 items)', 200, [16])]
    for case, n, sizes in cases:
        x, y = data(n)
        for name, cb in [('GradAccum', GradAccum(64)), ('GradientAccumulation', GradientAccumulation(64))]:
            steps = quiet_fit(learner(x, y, sizes, [StepGrads(), cb], dev)).step_grads.rows
            rows.append(dict(case=case, callback=name, n=n, steps=len(steps), items=[r['items'] for r in steps],
                             max_rel_diff=max(r['rel'] for r in steps),
                             worst_norm_ratio=max((r['norm'] for r in steps), key=lambda v: abs(v-1))))
    return rows

class TimedGradAccum(GradAccum):
    "`GradAccum` that adds up the process CPU time spent in its own event handlers."
    spent = 0.
    def _timed(name):
        def f(self):
            c = time.process_time()
            try: getattr(GradAccum, name)(self)
            finally: TimedGradAccum.spent += time.process_time()-c
        f.__name__ = name
        return f
    before_fit, before_train, before_batch, after_loss, before_step = map(
        _timed, ('before_fit', 'before_train', 'before_batch', 'after_loss', 'before_step'))

def in_callback_share(dev, n, sizes, eff_bs, repeats):
    "Median share of the training epoch's CPU time spent inside GradAccum's handlers."
    x, y, shares = *data(n), []
    for r in range(repeats):
        TimedGradAccum.spent, tt = 0., TrainTime(dev)
        quiet_fit(learner(x, y, sizes, [TimedGradAccum(eff_bs), tt], dev))
        shares.append(TimedGradAccum.spent/tt.cpu[0])
    return statistics.median(shares)

CONFIGS = [('bs16 no callback (accum=1)', [16], lambda: []),
           ('bs16 GradAccum(16) (accum=1)', [16], lambda: [GradAccum(16)]),
           ('bs16 GradAccum(64) (accum=4)', [16], lambda: [GradAccum(64)]),
           ('bs16 GradientAccumulation(64) (accum=4)', [16], lambda: [GradientAccumulation(64)]),
           ('bs48 no callback (accum=1)', [48], lambda: []),
           ('bs48 GradAccum(64) (96/step, rescaled)', [48], lambda: [GradAccum(64)])]

def throughput(dev, n, repeats):
    x, y = data(n)
    for name, sizes, cbs in CONFIGS: quiet_fit(learner(x, y, sizes, cbs(), dev))      # warm-up
    wall, cpu = {c[0]: [] for c in CONFIGS}, {c[0]: [] for c in CONFIGS}
    for r in range(repeats):                                                           # interleaved
        for name, sizes, cbs in CONFIGS:
            tt = TrainTime(dev)
            quiet_fit(learner(x, y, sizes, cbs() + [tt], dev))
            wall[name].append(tt.wall[0]); cpu[name].append(tt.cpu[0])
    return {name: dict(wall_s=statistics.median(wall[name]), cpu_s=statistics.median(cpu[name]),
                       items_per_s=n/statistics.median(wall[name]), items_per_cpu_s=n/statistics.median(cpu[name]),
                       walls=wall[name]) for name in wall}

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--items', type=int, default=1024, help='training items per timed epoch')
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--threads', type=int, default=1,
                   help='CPU threads for torch (1 by default: on a busy 2-core machine, 2 threads spin-wait on each other)')
    p.add_argument('--out', default=str(ROOT/'bench'/'results'/'accumulation'))
    a = p.parse_args()
    dev = torch.device(a.device)
    if dev.type == 'cpu': torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(False)
    head = [f'device: {device_name(dev)} ({dev.type}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs visible)',
            f'torch {torch.__version__}, fastai {fastai.__version__}, python {platform.python_version()}',
            'model: tiny CNN (3 conv + linear, no BatchNorm), 3x32x32 inputs, 10 classes, float32, SGD']
    print(*head, sep='\n')
    t0, load0 = time.time(), os.getloadavg()
    ex = exactness(dev)
    lines = head + ['', '(a) each optimizer step vs one big batch of that step\'s items at the same weights (one epoch, 64 items/step asked)',
                    f"{'case':34} {'callback':21} {'items':>5} {'steps':>5} {'max rel diff':>12} {'worst |g|/|g_big|':>17}  items per step"]
    for r in ex:
        lines.append(f"{r['case']:34} {r['callback']:21} {r['n']:5d} {r['steps']:5d} {r['max_rel_diff']:12.2e} "
                     f"{r['worst_norm_ratio']:17.4f}  {r['items']}")
    print(*lines[len(head):], sep='\n')
    tp = throughput(dev, a.items, a.repeats)
    load1 = os.getloadavg()
    tl = ['', f'(b) training throughput, {a.items} items per epoch, median of {a.repeats} interleaved repeats after a warm-up',
          f'    (1-min load average {load0[0]:.1f} before, {load1[0]:.1f} after: on a shared machine the CPU-time columns are the steadier)',
          f"{'config':42} {'wall s':>7} {'items/s':>8} {'ratio':>6} {'CPU s':>7} {'items/CPU s':>11} {'ratio':>6}"]
    for name, r in tp.items():
        base = tp['bs48 no callback (accum=1)' if name.startswith('bs48') else 'bs16 no callback (accum=1)']
        r['ratio'], r['cpu_ratio'] = r['items_per_s']/base['items_per_s'], r['items_per_cpu_s']/base['items_per_cpu_s']
        tl.append(f"{name:42} {r['wall_s']:7.3f} {r['items_per_s']:8.0f} {r['ratio']:6.3f} {r['cpu_s']:7.3f} "
                  f"{r['items_per_cpu_s']:11.0f} {r['cpu_ratio']:6.3f}")
    k4, k1 = tp['bs16 GradAccum(64) (accum=4)'], tp['bs16 no callback (accum=1)']
    acc4, acc4_cpu = k4['items_per_s']/k1['items_per_s'], k4['items_per_cpu_s']/k1['items_per_cpu_s']
    share16, share48 = in_callback_share(dev, a.items, [16], 64, 5), in_callback_share(dev, a.items, [48], 64, 5)
    tl += ['', f'GradAccum accum=4 vs accum=1 (no callback) at micro-batch 16, items/s ratio: {acc4:.3f} by wall time, '
               f'{acc4_cpu:.3f} by CPU time',
           '(ratio > 1: accumulating is faster, it makes one optimizer step per 4 micro-batches; overhead = 1 - ratio when < 1)',
           f'CPU time inside GradAccum\'s own handlers, share of the training epoch: {share16*100:.2f}% at bs16/GradAccum(64), '
           f'{share48*100:.2f}% at bs48/GradAccum(64) (rescaling every step)',
           f'bench wall time {time.time()-t0:.0f} s']
    print(*tl, sep='\n')
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.txt').write_text('\n'.join(lines + tl) + '\n')
    with open(out.with_suffix('.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['device', 'section', 'case', 'callback', 'metric', 'value'])
        dn = device_name(dev)
        for r in ex:
            w.writerow([dn, 'exactness', r['case'], r['callback'], 'max_rel_diff', f"{r['max_rel_diff']:.3e}"])
            w.writerow([dn, 'exactness', r['case'], r['callback'], 'worst_norm_ratio', f"{r['worst_norm_ratio']:.6f}"])
            w.writerow([dn, 'exactness', r['case'], r['callback'], 'steps', r['steps']])
            w.writerow([dn, 'exactness', r['case'], r['callback'], 'items_stepped', sum(r['items'])])
            w.writerow([dn, 'exactness', r['case'], r['callback'], 'items_in_epoch', r['n']])
        for name, r in tp.items():
            for k in ['items_per_s', 'ratio', 'items_per_cpu_s', 'cpu_ratio']:
                w.writerow([dn, 'throughput', name, '', k, f"{r[k]:.4f}"])
        w.writerow([dn, 'throughput', 'accum=4 vs accum=1, micro-batch 16', 'GradAccum', 'items_per_s_ratio', f'{acc4:.4f}'])
        w.writerow([dn, 'throughput', 'accum=4 vs accum=1, micro-batch 16', 'GradAccum', 'items_per_cpu_s_ratio', f'{acc4_cpu:.4f}'])
        w.writerow([dn, 'overhead', 'bs16 GradAccum(64)', 'GradAccum', 'cpu_share_in_handlers', f'{share16:.5f}'])
        w.writerow([dn, 'overhead', 'bs48 GradAccum(64)', 'GradAccum', 'cpu_share_in_handlers', f'{share48:.5f}'])
    try:
        import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 3.5))
        names = list(tp); ys = range(len(names))
        ax.barh([y-0.2 for y in ys], [tp[k]['items_per_s'] for k in names], 0.4, label='by wall time')
        ax.barh([y+0.2 for y in ys], [tp[k]['items_per_cpu_s'] for k in names], 0.4, label='by process CPU time')
        ax.set_yticks(list(ys), names); ax.invert_yaxis(); ax.set_xlabel('training items/s (median)'); ax.legend(fontsize=8)
        ax.set_title(f'Gradient accumulation throughput, {device_name(dev)}', fontsize=9)
        fig.tight_layout(); fig.savefig(out.with_suffix('.png'), dpi=100)
    except ImportError: pass

if __name__ == '__main__': main()
