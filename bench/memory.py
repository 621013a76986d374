#!/usr/bin/env python
"""Peak training memory and speed against `accum`, and the `accum` that `find_accum` picks for a budget, in one run.

    python bench/memory.py          # CPU part (runs anywhere): bench/results/memory_cpu.{csv,png,txt}
    python bench/memory.py --gpu    # GPU part (needs CUDA):    bench/results/memory_gpu.{csv,png,txt}

CPU (demo data, a CPU memory budget on the process's resident memory):
  (a) resnet18 and convnext_atto at 128 px (item `Resize(160)`), 64 items per optimizer step, accum 1, 2, 4, 8:
      `measure` with `steps` optimizer steps plus one micro-batch; peak MiB (the kernel's peak RSS) and items/s
      (the training batches after the first).
  (b) `find_accum` for convnext_atto at a budget halfway between its accum=1 and accum=4 peaks from (a), with gradient
      checkpointing (timm's ConvNeXt keeps only each block's input; resnet18's stages save little): its pick, predicted
      against measured peak, the probes it needed, and checkpointing's saving.
GPU (Road to the Top's configurations; the dataset `paddy_data()` finds: the real one if present, else the demo, which needs
the same memory at the same sizes; pretrained weights only at full scale):
  (a) Road to the Top's probe: convnext_small_in22k at 128 px with accum 1, 2, 4 (CUDA context + peak reserved, and the
      allocator's peak allocated).
  (b) the eight configurations of Road to the Top's ensemble, each with the accum `find_accum` picks for a Kaggle T4 (15,110 MiB,
      `KAGGLE_GPU_MIB`; held to it by `set_per_process_memory_fraction` on a larger card), then measured at that accum.
Each row carries the device's name; the PNG's title does too.
"""
import argparse, math, os, sys, time, warnings
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings('ignore', message='The pynvml package is deprecated')
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
import pandas as pd, torch
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
from fastai.vision.all import Resize
from paddy_lib.data import paddy_data
from paddy_lib.core import device_name
from paddy_lib.memory import measure, find_accum, plot_peaks, KAGGLE_GPU_MIB

OUT = ROOT/'bench'/'results'
KAGGLE_MIB = KAGGLE_GPU_MIB  # a T4's 15,110 MiB: Kaggle's GPU today (Road to the Top's P100, 16,280 MiB, is retired)
RES = (640, 480)
ENSEMBLE = [  # Road to the Top's `models` dict: (arch, item, size)
    ('convnext_large_in22k', Resize(RES), 224),
    ('convnext_large_in22k', Resize(RES), (320, 224)),
    ('vit_large_patch16_224', Resize(480, method='squish'), 224),
    ('vit_large_patch16_224', Resize(RES), 224),
    ('swinv2_large_window12_192_22k', Resize(480, method='squish'), 192),
    ('swinv2_large_window12_192_22k', Resize(RES), 192),
    ('swin_large_patch4_window7_224', Resize(480, method='squish'), 224),
    ('swin_large_patch4_window7_224', Resize(RES), 224),
]
COLS = ['part', 'arch', 'size', 'item', 'accum', 'bs', 'grad_ckpt', 'peak_mib', 'used_mib', 'allocated_mib', 'oom',
        'items_per_s', 'budget_mib', 'predicted_mib', 'probes', 'device']

def item_name(item): return f"Resize({item.size[0]}x{item.size[1]}, {item.method})"

def sweep(part, arch, size, item, accums, steps, path, device=None):
    rows = []
    for a in accums:
        r = measure(arch, size, accum=a, item=item, n_batches=steps*a+1, path=path, device=device)
        rows.append({**r, 'part': part, 'item': item_name(item), 'size': str(size)})
        print(f"  {arch} @ {size}, accum {a}: peak {r['peak_mib']:,.0f} MiB, {r['items_per_s']:.1f} items/s"
              + (f"  [{r['oom']}]" if r['oom'] else ''), flush=True)
    return rows

def pick(part, arch, size, item, budget, steps, path, device=None, **kw):
    c = find_accum(arch, size, budget_mib=budget, item=item, path=path, device=device, verbose=True, **kw)
    r = measure(arch, size, accum=int(c), item=item, n_batches=steps*int(c)+1, path=path, device=device)
    row = {**r, 'part': part, 'item': item_name(item), 'size': str(size), 'budget_mib': budget, 'predicted_mib': c.predicted,
           'probes': len(c.probes)}
    return row, c

def save(rows, name, budget, title_extra, summary):
    df = pd.DataFrame(rows).reindex(columns=COLS)
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT/f'{name}.csv', index=False)
    sw, pk = df[df.part == 'accum sweep'], df[df.part != 'accum sweep']
    fig, axs = plt.subplots(1, 2, figsize=(12, 4.2))
    plot_peaks(sw.assign(size=sw['size'].astype(str)), budget, ax=axs[0], title='peak memory against accum')
    labels = [f"{a}\n{s} {i.split(',')[0][7:]}\naccum {int(x)}" for a, s, i, x in zip(pk.arch, pk['size'], pk['item'], pk.accum)]
    axs[1].bar(range(len(pk)), pk.peak_mib, color=['tab:red' if o else 'tab:blue' for o in pk.oom.notna()])
    if len(pk) and pk.budget_mib.notna().any():
        for b in pk.budget_mib.dropna().unique(): axs[1].axhline(b, color='red', ls='--', label=f'budget {b:,.0f} MiB')
        axs[1].scatter(range(len(pk)), pk.predicted_mib, marker='_', s=400, color='k', zorder=3, label='predicted by find_accum')
        axs[1].legend(fontsize=8)
    axs[1].set_xticks(range(len(pk))); axs[1].set_xticklabels(labels, fontsize=6)
    axs[1].set_ylabel('peak memory (MiB)'); axs[1].set_title("find_accum's pick, measured", fontsize=10)
    fig.suptitle(f"{df.device.iloc[0]}{title_extra}", fontsize=10)
    fig.tight_layout(); fig.savefig(OUT/f'{name}.png', dpi=110)
    (OUT/f'{name}.txt').write_text(summary + '\n\n' + df.drop(columns=['device']).round(1).to_string(index=False) + '\n')
    print(f"wrote {OUT/name}.csv/.png/.txt")

def cpu(steps):
    path = paddy_data('demo')
    item = Resize(160, method='squish')
    rows, t0 = [], time.time()
    rows += sweep('accum sweep', 'resnet18', 128, item, (1, 2, 4, 8), steps, path, 'cpu')
    rows += sweep('accum sweep', 'convnext_atto', 128, item, (1, 2, 4, 8), steps, path, 'cpu')
    pk = {r['accum']: r['peak_mib'] for r in rows if r['arch'] == 'resnet18'}
    ck = {r['accum']: r['peak_mib'] for r in rows if r['arch'] == 'convnext_atto'}
    budget = (ck[1] + ck[4]) / 2
    row, c = pick('find_accum', 'convnext_atto', 128, item, budget, steps, path, device='cpu', grad_ckpt=True)
    rows.append(row)
    load = ', '.join(f'{x:.1f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'
    lines = [f"device: {device_name('cpu')}; torch {torch.__version__}, {torch.get_num_threads()} threads; {time.time()-t0:.0f} s; "
             f"load average at the end {load} (items/s are only comparable within this run)",
             "memory = peak resident memory of the process (the kernel's VmHWM, reset per probe), MiB; "
             "items/s over the training micro-batches after the first",
             f"resnet18 @ 128: peak accum 1 -> 2 -> 4 -> 8: " + ' -> '.join(f"{pk[a]:,.0f}" for a in (1, 2, 4, 8)) + ' MiB',
             f"convnext_atto @ 128: peak accum 1 -> 2 -> 4 -> 8: " + ' -> '.join(f"{ck[a]:,.0f}" for a in (1, 2, 4, 8)) + ' MiB',
             f"find_accum(convnext_atto, budget {budget:,.0f} MiB, halfway between accum 1 and 4): accum={int(c)}, predicted "
             f"{c.predicted:,.0f} MiB, probe {c.measured:,.0f} MiB, re-measured {row['peak_mib']:,.0f} MiB "
             f"({'fits' if row['peak_mib'] <= budget else 'OVER'}); line {c.fixed_mib:,.0f} MiB + {c.per_item_mib:.2f} MiB/item; "
             f"{(c.probes.role != 'ckpt').sum()} probes",
             f"gradient checkpointing at {c.ckpt['micro_bs']} items: saves {c.ckpt['saved_mib']:,.0f} MiB, "
             f"{c.ckpt['time_ratio']:.2f}x the time per item; half the accum fits with it: {c.ckpt['half_accum_fits']}"]
    print('\n'.join(lines))
    save(rows, 'memory_cpu', budget, ' — demo scale, CPU memory budget', '\n'.join(lines))

def gpu(steps):
    if not torch.cuda.is_available(): sys.exit("--gpu needs a CUDA GPU; run without --gpu for the CPU part.")
    path = paddy_data()
    rows, t0, lines = [], time.time(), []
    rows += sweep('accum sweep', 'convnext_small_in22k', 128, Resize(480, method='squish'), (1, 2, 4), steps, path)
    for arch, item, size in ENSEMBLE:
        try:
            row, c = pick('find_accum', arch, size, item, KAGGLE_MIB, steps, path)
            rows.append(row)
            lines.append(f"{arch} @ {size} {item_name(item)}: accum={int(c)}, predicted {c.predicted:,.0f} MiB, "
                         f"measured {row['peak_mib']:,.0f} MiB, {row['items_per_s']:.1f} items/s")
        except Exception as e:  # one configuration failing (e.g. BudgetError) must not lose the others' figures
            rows.append(dict(part='find_accum', arch=arch, size=str(size), item=item_name(item), oom=f'{type(e).__name__}: {e}',
                             budget_mib=KAGGLE_MIB, device=device_name()))
            lines.append(f"{arch} @ {size} {item_name(item)}: {type(e).__name__}: {e}")
        print(lines[-1], flush=True)
    head = [f"device: {device_name()}; torch {torch.__version__}; {time.time()-t0:.0f} s; data: {path}",
            "memory = CUDA context + the allocator's peak reserved (what nvidia-smi shows at the peak), MiB"]
    save(rows, 'memory_gpu', KAGGLE_MIB, f' — Road to the Top\'s configurations, Kaggle T4 budget {KAGGLE_MIB:,.0f} MiB', '\n'.join(head + lines))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--gpu', action='store_true', help='the GPU part (needs CUDA) instead of the CPU part')
    p.add_argument('--steps', type=int, default=2, help='optimizer steps per measurement (plus one micro-batch)')
    a = p.parse_args()
    gpu(a.steps) if a.gpu else cpu(a.steps)
