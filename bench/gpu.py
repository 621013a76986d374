#!/usr/bin/env python
"""GPU proof: every GPU figure the course quotes, measured in one run on random weights and full-resolution images.

    python bench/gpu.py                # needs CUDA: bench/results/gpu_<device>_<section>.csv, gpu_<device>.txt and .png
    python bench/gpu.py --smoke        # every code path on this CPU with tiny timm models (CI): bench/results/smoke/
    python bench/gpu.py --out DIR      # write the files to DIR instead (the device tool: --out $OUT)

NOT RUN ON A GPU YET: the full mode was written and rehearsed (`--smoke`) in a session that was lent no device; no
file under bench/results/ comes from it until a session with a device runs bench/README.md's one `run` command.

Memory does not depend on the weights' values, so every model is timm's with random weights (`pretrained=False`) and
the images are `make_demo_paddy` photos at the real 480x640, made on the machine in a temporary folder: nothing is
downloaded. Memory runs train in fp16, as a Kaggle T4 or P100 (neither computes in bf16) and Road to the Top (`to_fp16()`)
do; items/s are this card's, not a Kaggle GPU's. A budget is rehearsed on a larger card by `hold_to_budget`
(`set_per_process_memory_fraction`, what `find_accum` does itself): paddy_lib.memory's named `GPU_BUDGETS`, a T4's
15,110 MiB (15,843,721,216 bytes) and Road to the Top's P100 16,280 MiB (--smoke adds 'tiny', 1 MiB, that nothing fits).

Sections (one CSV each, every row labelled with the device, torch/timm/fastai versions and the date):
  seed_table  Road to the Top's probe: convnext_small_in22k (today's convnext_small.fb_in22k) at 128 px, 64 items per step,
              accum 1, 2, 4 (and 8): peak MiB (CUDA context + the allocator's peak reserved, what nvidia-smi shows),
              the allocator's peak allocated, items/s; and the peak-vs-items line `find_accum` fits on two probes
              (limit=False, as the table is unheld), predicted against measured at each accum.
  find_accum  Road to the Top's eight members (`FULL_CONFIGS`) and its two probes (convnext_large at 224 and (320,240)) under
              each budget: the pick, predicted vs measured peak, probes, seconds; the peaks at accum 2 and 1 (measured
              where a probe ran, else the line's), so whether "accum=2 for every case" holds. A member whose GPU batch
              is an earlier one's (only its item transform differs, and that runs on the CPU) is not searched again:
              it is measured once at that pick, held to the budget, with the real accumulation.
  grad_accum  `GradAccum` against one big batch at the same weights, each optimizer step, in fp32, fp16 and bf16, for
              bench/accumulation.py's small CNN without BatchNorm: accum 4 (16 items a micro-batch) against accum 1
              (64), whose error is the precision's own (fp32 reference, TF32 off).
  anatomy     `memory_anatomy` of vit_large_patch16_224 at 224 px, accum 2 (weights, gradients, Adam's state,
              activations, the input) against the measured peak of three micro-batches of its training.
  claims      each seed or course claim, the number measured, held or not, and the criterion.
A time guard (--minutes) skips the configurations left when it is reached, so the run ends inside the device call.
"""
import argparse, datetime, math, os, platform, re, sys, time, traceback, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings('ignore', message='The pynvml package is deprecated')
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')

SECTIONS = ('seed_table', 'find_accum', 'grad_accum', 'anatomy', 'claims')

def refuse_without_cuda(torch):
    "The full mode's one line when there is no GPU."
    print(f"bench/gpu.py needs a CUDA GPU, and torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}) sees "
          "none here: run it on a GPU (bench/README.md gives the device command), or pass --smoke to rehearse every code "
          "path on this CPU.", file=sys.stderr)
    return 2

def slug(s): return re.sub(r'[^a-z0-9]+', '-', s.lower()).strip('-')

def config(smoke):
    "What the run measures: Road to the Top's models at full size, or tiny timm models on small images (--smoke)."
    from fastai.vision.all import Resize
    from paddy_lib.ensemble import Member, FULL_CONFIGS
    if not smoke:
        return dict(eff_bs=64, demo=dict(n_train=1000, n_test=8, size=(480, 640)), grad_items=512,
                    table=('convnext_small_in22k', 128, Resize(480, method='squish'), (1, 2, 4, 8)),
                    configs=[(f'member {i}', m) for i, m in enumerate(FULL_CONFIGS, 1)]
                            + [('seed probe 1', Member('convnext_large_in22k', ('squish', 480), 224)),
                               ('seed probe 2', Member('convnext_large_in22k', ('squish', 480), (320, 240)))],
                    close_arch='vit_large_patch16_224', anatomy=(Member('vit_large_patch16_224', ('squish', 480), 224), 2))
    vit = dict(img_size=64)
    return dict(eff_bs=16, demo=dict(n_train=300, n_test=4, size=(96, 128)), grad_items=128,
                table=('test_convnext', 64, Resize(96, method='squish'), (1, 2, 4, 8)),
                configs=[('member 1', Member('test_convnext', ('crop', (128, 96)), 64)),
                         ('member 2', Member('test_vit', ('squish', 96), 64, kwargs=vit)),
                         ('member 3', Member('test_vit', ('crop', (128, 96)), 64, kwargs=vit)),
                         ('seed probe 1', Member('test_convnext', ('squish', 96), (80, 64)))],
                close_arch='test_vit', anatomy=(Member('test_vit', ('squish', 96), 64, kwargs=vit), 2))

class Bench:
    "One run: its device, data, budgets, rows per section and the files they go to."
    def __init__(self, a, torch):
        from paddy_lib import memory
        import timm, fastai
        self.a, self.torch, self.smoke, self.t0 = a, torch, a.smoke, time.time()
        self.dev = torch.device('cpu' if a.smoke else 'cuda')
        self.cfg = config(a.smoke)
        self.eff_bs = self.cfg['eff_bs']
        self.precision = 'fp16' if self.dev.type == 'cuda' else 'fp32'
        self.workers = a.workers if self.dev.type == 'cuda' else 0
        # paddy_lib.memory.GPU_BUDGETS (MiB) where this paddy_lib has it; before it, the same figures: a T4's
        # 15,843,721,216 bytes as CUDA reports them (15,110 MiB), and Road to the Top's P100 16,280 MiB
        fallback = {'T4': 15_843_721_216/memory.MiB, 'P100': 16280.}
        named = {**fallback, **getattr(memory, 'GPU_BUDGETS', {})}
        self.budgets = {k: float(named[k]) for k in fallback}
        if a.smoke: self.budgets['tiny'] = 1.  # smoke only: a budget nothing fits, for the no-fit path (BudgetError)
        self.device = memory.device_name(self.dev)
        self.meta = dict(device=self.device, torch=torch.__version__, timm=timm.__version__, fastai=fastai.__version__,
                         date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                         mode='smoke' if a.smoke else 'full')
        self.out = Path(a.out) if a.out else ROOT/'bench'/'results'/('smoke' if a.smoke else '')
        self.stem = f"gpu{'_smoke' if a.smoke else ''}_{slug(self.device)}"
        self.rows = {s: [] for s in SECTIONS}
        self.notes, self.failed, self.trainings = [], [], 0
        self.line = None
        self.notes.append(f"default_budget() on this device: {memory.default_budget(self.dev):,.0f} MiB")

    def elapsed(self): return time.time() - self.t0
    def time_left(self): return self.a.minutes*60 - self.elapsed()
    def kw(self, m=None):
        "What every probe passes through `measure`/`find_accum` to `train`: device, precision, random weights, workers."
        return dict(eff_bs=self.eff_bs, path=self.path, device=self.dev, precision=self.precision, pretrained=False,
                    num_workers=self.workers, **(m.kwargs if m is not None else {}))
    def measure(self, *args, **kw):
        from paddy_lib.memory import measure
        self.trainings += 1
        return measure(*args, **kw)
    def find_accum(self, *args, **kw):
        from paddy_lib.memory import find_accum
        c = find_accum(*args, **kw)
        self.trainings += len(c.probes)
        return c

    def write(self, section):
        import pandas as pd
        self.out.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(self.rows[section])
        for k, v in self.meta.items(): df[k] = v
        df.to_csv(self.out/f'{self.stem}_{section}.csv', index=False)
        return df

# ---------------------------------------------------------------------------------------------------------------- data
def make_data(b, tmp):
    from paddy_lib.data import make_demo_paddy
    t = time.time()
    b.path = make_demo_paddy(Path(tmp)/'paddy', **b.cfg['demo'])
    n = sum(1 for _ in (b.path/'train_images').rglob('*.jpg'))
    b.notes.append(f"data: {n} make_demo_paddy training images of {b.cfg['demo']['size'][0]}x{b.cfg['demo']['size'][1]} "
                   f"(w x h) in a temporary folder, made in {time.time()-t:.0f} s")
    print(b.notes[-1], flush=True)

# ------------------------------------------------------------------------------------------------------ Road to the Top's table
def seed_table(b):
    "Road to the Top's convnext_small probe at accum 1, 2, 4 (and 8), then the line find_accum fits, at each accum."
    from paddy_lib.training import timm_arch
    arch, size, item, accums = b.cfg['table']
    for a in accums:
        r = b.measure(arch, size, accum=a, item=item, **b.kw())
        b.rows['seed_table'].append(dict(arch=arch, timm_name=timm_arch(arch, verbose=False), size=str(size),
            item=f'Resize({item.size[0]}, {item.method})', accum=a, bs=r['bs'], peak_mib=r['peak_mib'],
            allocated_mib=r.get('allocated_mib', math.nan), reserved_mib=r.get('reserved_mib', math.nan),
            context_mib=r.get('context_mib', math.nan), items_per_s=r['items_per_s'], oom=r['oom'], seconds=r['seconds']))
        print(f"  {arch} @ {size}, accum {a}: peak {r['peak_mib']:,.0f} MiB, {r['items_per_s']:.1f} items/s", flush=True)
    t = time.time()
    c = b.find_accum(arch, size, budget_mib=b.budgets['T4'], item=item, limit=False, verbose=True, **b.kw())
    b.line = dict(fixed_mib=c.fixed_mib, per_item_mib=c.per_item_mib, pick=int(c), probes=len(c.probes), seconds=time.time()-t)
    for r in b.rows['seed_table']:
        p = c.predict(r['accum'])
        r.update(line_predicted_mib=p, line_error=p/r['peak_mib']-1, line_fixed_mib=c.fixed_mib, line_per_item_mib=c.per_item_mib)
    return b.write('seed_table')

# ---------------------------------------------------------------------------------------------- find_accum, per budget
def _at(c, eff_bs, accum):
    "The peak at `accum` from find_accum's probes (inf if it ran out of memory), else the line's prediction."
    p = c.probes[(c.probes.role != 'ckpt') & (c.probes.micro_bs == eff_bs//accum)]
    if len(p): return (math.inf if p.oom.iloc[-1] else float(p.peak_mib.iloc[-1])), 'measured'
    return c.predict(accum), 'predicted'

def find_accums(b):
    "find_accum under each budget for each distinct GPU batch; members differing only in the CPU-side item: one measure."
    from paddy_lib.memory import BudgetError, hold_to_budget, report_gpu
    from paddy_lib.training import timm_arch
    groups = {}
    for label, m in b.cfg['configs']: groups.setdefault((m.arch, str(m.size), repr(sorted(m.kwargs.items()))), []).append((label, m))
    for group in groups.values():
        (first, fm), picks = group[0], {}
        for label, m in group:
            base = dict(config=label, member=m.name, arch=m.arch, timm_name=timm_arch(m.arch, verbose=False),
                        size=str(m.size), item=f'{m.item[0]} {m.item[1]}')
            for bname, B in b.budgets.items():
                row = dict(base, budget=bname, budget_mib=B)
                if b.time_left() <= 0:
                    b.rows['find_accum'].append(dict(row, how='skipped: the time guard (--minutes) was reached'))
                    continue
                t = time.time()
                try:
                    if m is fm:
                        c = b.find_accum(m.arch, m.size, budget_mib=B, item=m.resize, verbose=True, **b.kw(m))
                        p2, s2 = _at(c, b.eff_bs, 2); p1, s1 = _at(c, b.eff_bs, 1)
                        picks[bname] = c
                        row.update(how='find_accum', accum=int(c), predicted_mib=c.predicted, measured_mib=c.measured,
                                   prediction_error=c.predicted/c.measured-1, fixed_mib=c.fixed_mib, per_item_mib=c.per_item_mib,
                                   probes=len(c.probes), probe_peaks=' '.join(f"{r.micro_bs}:{'OOM' if r.oom else round(r.peak_mib)}"
                                                                             for r in c.probes.itertuples()),
                                   accum2_peak_mib=p2, accum2_from=s2, accum1_peak_mib=p1, accum1_from=s1)
                    elif bname in picks:
                        c = picks[bname]
                        with hold_to_budget(B, b.dev): r = b.measure(m.arch, m.size, accum=int(c), item=m.resize, **b.kw(m))
                        row.update(how=f'same GPU batch as {first}: measured at its pick, held to the budget, accumulating',
                                   accum=int(c), predicted_mib=c.predict(int(c)), measured_mib=r['peak_mib'],
                                   prediction_error=c.predict(int(c))/r['peak_mib']-1, probes=1, oom=r['oom'],
                                   accum2_peak_mib=_at(c, b.eff_bs, 2)[0], accum2_from=f'as {first}',
                                   accum1_peak_mib=_at(c, b.eff_bs, 1)[0], accum1_from=f'as {first}')
                    else:
                        row.update(how=f'not measured: {first} has no pick under this budget')
                except BudgetError as e:
                    row.update(how='find_accum', error=f'BudgetError: {e}', accum2_peak_mib=math.inf, accum1_peak_mib=math.inf)
                except Exception as e:  # one configuration failing must not lose the others' figures
                    row.update(how='failed', error=f'{type(e).__name__}: {e}')
                    b.failed.append(f"find_accum {label} {bname}: {type(e).__name__}: {e}")
                    traceback.print_exc()
                if 'accum2_peak_mib' in row:
                    row.update(accum2_fits=row['accum2_peak_mib'] <= B, accum1_over=row['accum1_peak_mib'] > B)
                    row['accum2_needed'] = row['accum2_fits'] and row['accum1_over']
                row['seconds'] = time.time() - t
                b.rows['find_accum'].append(row)
                print(f"{label} ({m.name}) under {bname} {B:,.0f} MiB: accum {row.get('accum', '-')}, measured "
                      f"{row.get('measured_mib', math.nan):,.0f} MiB, {row['seconds']:.0f} s {row.get('error', '')}", flush=True)
            b.write('find_accum')
    report_gpu(b.dev)  # every probe's memory given back?
    return b.write('find_accum')

# ----------------------------------------------------------------------------------------- GradAccum against one batch
def grad_accum(b):
    "Each optimizer step of GradAccum (accum 4) and of plain batches (accum 1) against one big fp32 batch, per precision."
    import importlib.util  # bench/accumulation.py's tiny_cnn (no BatchNorm), data, learner, StepGrads and quiet_fit
    spec = importlib.util.spec_from_file_location('bench_accumulation', ROOT/'bench'/'accumulation.py')
    acc = importlib.util.module_from_spec(spec); spec.loader.exec_module(acc)
    from fastai.callback.fp16 import MixedPrecision
    from paddy_lib.accumulation import GradAccum
    torch = b.torch
    class SkipAwareStepGrads(acc.StepGrads):
        "StepGrads that drops a group whose step fp16's `MixedPrecision` skipped (an overflow), and counts it."
        def before_fit(self): super().before_fit(); self.n_skipped = 0
        def after_cancel_step(self): self.xs, self.ys, self.n_skipped = [], [], self.n_skipped + 1
    x, y = acc.data(b.cfg['grad_items'])
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a true fp32 reference
    try:
        for prec in ('fp32', 'fp16', 'bf16'):
            for accum in (1, 4):
                sg = SkipAwareStepGrads()
                cbs = [sg, GradAccum(64)] + ([MixedPrecision(amp_mode=prec)] if prec != 'fp32' else [])
                acc.quiet_fit(acc.learner(x, y, [64//accum], cbs, b.dev))
                for i, r in enumerate(sg.rows, 1):
                    b.rows['grad_accum'].append(dict(precision=prec, amp_active=b.dev.type == 'cuda' and prec != 'fp32',
                        accum=accum, micro_bs=64//accum, step=i, items=r['items'], rel_error=r['rel'], norm_ratio=r['norm'],
                        skipped_steps=sg.n_skipped))
                worst = max(r['rel'] for r in sg.rows) if sg.rows else math.nan
                print(f"  GradAccum {prec} accum {accum}: {len(sg.rows)} steps, worst relative error {worst:.2e}"
                      + (f", {sg.n_skipped} skipped" if sg.n_skipped else ''), flush=True)
    finally: torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return b.write('grad_accum')

# ----------------------------------------------------------------------------------------- the anatomy of one large model
def anatomy(b):
    "memory_anatomy's parts against the peak of the same learner's first accum+1 micro-batches."
    from paddy_lib.data import paddy_dls
    from paddy_lib.memory import memory_anatomy, peak_memory, free_learner, probe_folder, collect
    from paddy_lib.training import paddy_learner, StopAfter
    torch = b.torch
    m, accum = b.cfg['anatomy']
    bs = b.eff_bs // accum
    dls = paddy_dls(b.path, m.size, item=m.resize, bs=bs, trn_path=probe_folder(b.path, bs*(accum+1)), device=b.dev,
                    num_workers=b.workers)
    learn = paddy_learner(m.arch, m.size, accum=accum, dls=dls, eff_bs=b.eff_bs, pretrained=False, precision=b.precision,
                          cbs=[StopAfter(accum+1)], **m.kwargs)
    learn.unfreeze(); learn.model.to(b.dev)
    xb = learn.dls.one_batch()[0]
    amp = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(b.precision)
    est = memory_anatomy(learn.model, xb, opt_states=2, amp=amp)  # fastai's default optimizer, Adam: 2 tensors a weight
    del xb
    with learn.no_bar(), learn.no_logging(), peak_memory(b.dev) as pm: learn.fit_one_cycle(1, 0.01)
    b.trainings += 1
    free_learner(learn); del learn, dls; collect()
    name = f'{m.arch} @ {m.size}, accum {accum} ({bs} items a micro-batch), {b.precision}'
    for part, v in est.items(): b.rows['anatomy'].append(dict(model=name, kind='estimate', part=part, mib=v))
    measured = {'peak (context + reserved)' if pm.method == 'allocator' else 'peak (resident)': pm.peak,
                'peak allocated': getattr(pm, 'peak_allocated', math.nan), 'peak reserved': getattr(pm, 'peak_reserved', math.nan),
                'CUDA context': getattr(pm, 'overhead', math.nan), 'at entry': pm.baseline}
    for part, v in measured.items(): b.rows['anatomy'].append(dict(model=name, kind='measured', part=part, mib=v))
    print(f"  anatomy of {name}: estimate {est['total']:,.0f} MiB; measured {pm}", flush=True)
    return b.write('anatomy')

# ------------------------------------------------------------------------------------------------------------- claims
def claims(b):
    "Each claim, its measured number, held or not, and the criterion; from the rows the sections wrote."
    import pandas as pd
    rows, B = [], b.budgets
    def add(source, claim, measured, held, criterion): rows.append(dict(source=source, claim=claim, measured=measured,
                                                                       held=held, criterion=criterion))
    t = pd.DataFrame(b.rows['seed_table'])
    if len(t):
        pk = t.set_index('accum').peak_mib
        for a, gb in ((1, 5), (2, 4)):
            if a in pk: add('seed', f'{b.cfg["table"][0]} at {b.cfg["table"][1]} px, accum {a}: about {gb} GB',
                            f'{pk[a]:,.0f} MiB', bool(abs(pk[a]/(gb*1024)-1) <= 0.25), f'within 25% of {gb*1024:,} MiB')
        if {1, 2, 4} <= set(pk.index):
            add('seed', "accum 2 is not half of accum 1 (other overhead), and accum 4 is lower still",
                f'{pk[1]:,.0f} -> {pk[2]:,.0f} -> {pk[4]:,.0f} MiB', bool(pk[1]/2 < pk[2] and pk[4] < pk[2]),
                'peak(2) > peak(1)/2 and peak(4) < peak(2)')
        if 'line_error' in t:
            err = t.set_index('accum').line_error
            add('course 03_memory', 'peak = fixed + per-item x items: the line of two probes predicts every accum',
                ', '.join(f'accum {a}: {e:+.1%}' for a, e in err.items()), bool((err.abs() <= 0.10).all()),
                'within 10% at every accum (the CPU curve is convex: -17.9% at accum 1 in 03_memory)')
    f = pd.DataFrame(b.rows['find_accum'])
    if len(f) and 'accum2_needed' in f:
        for bname in B:
            g = f[(f.budget == bname) & f.accum2_needed.notna()]
            if not len(g): continue
            picks = ', '.join(f"{r.config}: {r.accum2_peak_mib:,.0f}" + ('' if r.accum2_from == 'measured' else '*') for r in g.itertuples())
            left = (f.budget == bname).sum() - len(g)
            add('seed', f'"accum=2 was what I needed for every case" ({bname}, {B[bname]:,.0f} MiB)',
                f'accum-2 peaks (MiB; * from the line or the first of its group): {picks}'
                + (f'; {left} configuration(s) not measured' if left else ''), bool(g.accum2_needed.astype(bool).all()),
                'for every configuration: peak at accum 2 <= budget < peak at accum 1')
        fit = f[(f.budget == 'P100') & (f.accum2_peak_mib <= B['P100'])]
        v = f[(f.arch == b.cfg['close_arch']) & (f.budget == 'P100') & f.accum2_peak_mib.notna()]
        if len(v):
            p2 = float(v.accum2_peak_mib.iloc[0]); room = B['P100'] - p2
            closest = bool(p2 >= fit.accum2_peak_mib.max()) if len(fit) else False
            add('seed', f'{b.cfg["close_arch"]} at accum 2 is "very close to going over the 16280MiB"',
                f'{p2:,.0f} MiB, {room:,.0f} MiB ({room/B["P100"]:.1%}) under; the closest of those that fit: {closest}',
                bool(0 <= room <= 0.10*B['P100']), 'fits, with at most 10% of the budget to spare')
        ok = f[f.measured_mib.notna()] if 'measured_mib' in f else f.iloc[:0]
        if len(ok):
            fits = (ok.measured_mib <= ok.budget_mib) & (ok.oom.isna() if 'oom' in ok else True)
            add('course 03_memory', "find_accum's pick fits the budget it was found for",
                f"{fits.sum()} of {len(ok)} picks measured under their budget", bool(fits.all()),
                'measured peak at the pick <= budget, without running out of memory')
    ga = pd.DataFrame(b.rows['grad_accum'])
    if len(ga):
        w = ga.groupby(['precision', 'accum']).rel_error.max()
        for prec in ga.precision.unique():
            if (prec, 1) in w and (prec, 4) in w:
                add('course 01_accumulation', f'GradAccum steps equal one big batch\'s ({prec}, no BatchNorm)',
                    f'worst relative error {w[prec, 4]:.2e} at accum 4; {w[prec, 1]:.2e} for plain batches of 64',
                    bool(w[prec, 4] <= 3*w[prec, 1] + 1e-5), "accum 4's error <= 3x the precision's own (accum 1) + 1e-5")
    an = pd.DataFrame(b.rows['anatomy'])
    if len(an):
        v = an.set_index(['kind', 'part']).mib
        tot, alloc = v['estimate', 'total'], v.get(('measured', 'peak allocated'), math.nan)
        add('course 03_memory', 'the anatomy (weights, gradients, optimizer state, activations, input) explains the peak',
            f'estimate {tot:,.0f} MiB; allocator peak {alloc:,.0f} MiB ({tot/alloc:.2f}x)' if alloc == alloc else
            f'estimate {tot:,.0f} MiB (no allocator on a CPU)',
            bool(0.7*alloc <= tot <= 1.1*alloc) if alloc == alloc else 'not applicable', '0.7 x allocated peak <= estimate <= 1.1 x')
    b.rows['claims'] = rows
    return b.write('claims')

# --------------------------------------------------------------------------------------------------------- TXT and PNG
def summary(b, dfs):
    import pandas as pd
    head = [f"GPU proof ({b.meta['mode']} mode): {b.meta['device']}; torch {b.meta['torch']}, timm {b.meta['timm']}, "
            f"fastai {b.meta['fastai']}, python {platform.python_version()}; {b.meta['date']}; {b.elapsed():.0f} s, "
            f"{b.trainings} short trainings",
            f"budgets (MiB): " + ', '.join(f'{k} {v:,.0f}' for k, v in b.budgets.items()) + f"; precision {b.precision}; "
            f"{b.eff_bs} items per optimizer step; random weights",
            'peak = CUDA context + the allocator\'s peak reserved (what nvidia-smi shows); on a CPU, the peak resident memory',
            *b.notes]
    if b.smoke: head.append('smoke: tiny models on small images on a CPU, for CI; none of these figures is a GPU figure')
    if b.failed: head += ['FAILED:', *b.failed]
    body = []
    for s, df in dfs.items():
        body += ['', f'== {s}']
        if df is None or not len(df): body.append('(not measured)'); continue
        show = df.drop(columns=[c for c in b.meta if c in df], errors='ignore')
        if s == 'claims':
            body += [f"[{ {'True': 'HELD', 'False': 'NOT HELD'}.get(str(r.held), r.held)}] ({r.source}) {r.claim}\n"
                     f"    measured: {r.measured}\n    criterion: {r.criterion}" for r in show.itertuples()]
        else:
            if s == 'grad_accum': show = show.assign(rel_error=show.rel_error.map('{:.2e}'.format))
            with pd.option_context('display.width', 250, 'display.max_columns', 40, 'display.max_colwidth', 60):
                body.append(show.round(4 if s == 'grad_accum' else 1).to_string(index=False))
    if b.line: body += ['', f"line (find_accum, limit=False, T4 budget): {b.line['fixed_mib']:,.0f} MiB + "
                            f"{b.line['per_item_mib']:.2f} MiB/item, {b.line['probes']} probes, {b.line['seconds']:.0f} s"]
    txt = '\n'.join(head + body) + '\n'
    (b.out/f'{b.stem}.txt').write_text(txt)
    return txt

def plot(b, dfs):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    import numpy as np
    from paddy_lib.memory import plot_peaks
    fig, axs = plt.subplots(2, 2, figsize=(13, 8.5))
    t = dfs.get('seed_table')
    if t is not None and len(t):
        ax = plot_peaks(t.assign(device=b.device), ax=axs[0, 0], title='Road to the Top\'s probe: peak against accum')
        if 'line_predicted_mib' in t: ax.plot(t.accum, t.line_predicted_mib, ls=':', color='gray', label='line of two probes')
        ax.scatter([1, 2], [5*1024, 4*1024], marker='*', s=120, color='k', zorder=3, label='seed: about 5, 4 GB')
        ax.legend(fontsize=7)
    f = dfs.get('find_accum')
    ax = axs[0, 1]
    if f is not None and len(f) and 'measured_mib' in f:
        names = list(dict.fromkeys(f.config))
        wd = 0.8/len(b.budgets)
        for k, (bname, B) in enumerate(b.budgets.items()):
            g = f[f.budget == bname].set_index('config').reindex(names)
            xs = np.arange(len(names)) + (k - (len(b.budgets)-1)/2)*wd
            ax.bar(xs, g.measured_mib, wd, label=f'{bname}: measured at the pick')
            ax.scatter(xs, g.predicted_mib, marker='_', s=200, color='k', zorder=3)
            for x, a in zip(xs, g.accum): ax.text(x, 0, '' if a != a else f'{int(a)}', ha='center', va='bottom', fontsize=7, color='w')
            ax.axhline(B, ls='--', color=f'C{k}', lw=1, label=f'{bname} budget {B:,.0f} MiB')
        ax.set_xticks(range(len(names))); ax.set_xticklabels(names, fontsize=7, rotation=30, ha='right')
        ax.set_ylabel('peak MiB (accum in the bar, - predicted)'); ax.legend(fontsize=7); ax.set_title("find_accum's picks", fontsize=9)
    ga = dfs.get('grad_accum')
    ax = axs[1, 0]
    if ga is not None and len(ga):
        w = ga.groupby(['precision', 'accum'], sort=False).rel_error.max().unstack()
        w.clip(lower=1e-9).plot.bar(ax=ax, logy=True, rot=0)
        ax.set_ylabel('worst relative error vs one fp32 batch'); ax.set_title('GradAccum (accum 4) vs plain batches (accum 1)', fontsize=9)
    an = dfs.get('anatomy')
    ax = axs[1, 1]
    if an is not None and len(an):
        est = an[(an.kind == 'estimate') & (an.part != 'total')]
        bottom = 0
        for r in est.itertuples(): ax.bar(0, r.mib, bottom=bottom, label=r.part); bottom += r.mib
        meas = an[an.kind == 'measured'].set_index('part').mib.dropna().drop('at entry', errors='ignore')
        ax.bar(range(1, len(meas)+1), meas.values, color='gray')
        ax.set_xticks(range(len(meas)+1)); ax.set_xticklabels(['estimate', *meas.index], fontsize=7, rotation=20)
        ax.set_ylabel('MiB'); ax.legend(fontsize=7); ax.set_title(f'anatomy: {an.model.iloc[0]}', fontsize=8)
    fig.suptitle(f"{b.device} ({b.meta['mode']}): torch {b.meta['torch']}, timm {b.meta['timm']}, fastai {b.meta['fastai']}, "
                 f"{b.meta['date']}", fontsize=10)
    fig.tight_layout(); fig.savefig(b.out/f'{b.stem}.png', dpi=100); plt.close(fig)

# --------------------------------------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--smoke', action='store_true', help='tiny timm models, small images, on the CPU: every code path, for CI')
    p.add_argument('--out', default=None, help='folder for the files (default bench/results, --smoke: bench/results/smoke)')
    p.add_argument('--minutes', type=float, default=6.5, help='time guard: configurations not started by then are skipped')
    p.add_argument('--workers', type=int, default=8, help='DataLoader workers on the GPU (the CPU: 0, as measure does)')
    p.add_argument('--threads', type=int, default=None,
                   help="torch CPU threads (default: --smoke, $OMP_NUM_THREADS or 1, as CI; else torch's own)")
    a = p.parse_args(argv)
    import torch  # torch alone before the check: the refusal comes quickly
    if not a.smoke and not torch.cuda.is_available(): return refuse_without_cuda(torch)
    if a.threads or a.smoke: torch.set_num_threads(a.threads or int(os.environ.get('OMP_NUM_THREADS') or 1))
    torch.manual_seed(0)
    import tempfile
    b = Bench(a, torch)
    print(f"bench/gpu.py ({b.meta['mode']}) on {b.device}: torch {b.meta['torch']}, timm {b.meta['timm']}, fastai "
          f"{b.meta['fastai']}; budgets {b.budgets}; writing {b.out}/{b.stem}_*", flush=True)
    from paddy_lib.memory import report_gpu
    report_gpu(b.dev)
    dfs = {}
    with tempfile.TemporaryDirectory(prefix='paddy-gpu-bench-') as tmp:
        make_data(b, tmp)
        for s, f in (('seed_table', seed_table), ('grad_accum', grad_accum), ('anatomy', anatomy), ('find_accum', find_accums)):
            print(f'== {s} ({b.elapsed():.0f} s in)', flush=True)
            try: dfs[s] = f(b)
            except Exception as e:
                b.failed.append(f'{s}: {type(e).__name__}: {e}'); traceback.print_exc()
                dfs[s] = b.write(s)  # what it measured before failing
    dfs['claims'] = claims(b)
    txt = summary(b, dfs)
    plot(b, dfs)
    print(txt[txt.index('== claims'):] if '== claims' in txt else txt)
    print(f"wrote {', '.join(sorted(q.name for q in b.out.glob(b.stem + '*')))} in {b.out} ({b.elapsed():.0f} s)")
    return 1 if b.failed else 0

if __name__ == '__main__': sys.exit(main())
