#!/usr/bin/env python
"""`paddy demo`, the course's main job, timed end to end on this machine, with its two CPU settings side by side.

    python bench/demo.py                 # writes bench/results/demo.{csv,txt}
    python bench/demo.py --busy 1        # the same with one other CPU-bound process running (a shared machine, CI)

Each row is one fresh `python -m paddy_lib.cli demo --retrain` (every member trained, none loaded) in a subprocess:
wall time, CPU time (user+sys of the process and its children), and the ensemble's hold-out error, for
PyTorch threads (`--threads`) x DataLoader workers (`--num-workers`). The configurations run interleaved, `--repeats`
times, so a change in the machine's load hits all of them alike; the load average at each start is recorded.
`--busy N` starts N processes doing single-threaded matrix products for the whole benchmark: what other notebooks or
tests do to the demo on a 2-core CI machine.
"""
import argparse, csv, itertools, os, platform, re, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/'bench'/'results'

def cpu_name():
    try:
        for l in Path('/proc/cpuinfo').read_text().splitlines():
            if l.startswith('model name'): return l.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()

BUSY = "import torch, time\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True: a = (a @ a).tanh()\n"

def run_demo(threads, workers, demo, tmp):
    out = Path(tmp)/f'out-{threads}-{workers}'
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, '-m', 'paddy_lib.cli', 'demo', '--out', str(out), '--retrain', '--no-progress',
                        '--threads', str(threads), '--num-workers', str(workers)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'PADDY_DEMO': str(demo)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode: raise SystemExit(f"paddy demo failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    err = re.search(r'ensemble: weighted average\s+\S+\s+([0-9.]+)', r.stdout)
    return dict(threads=threads, num_workers=workers, wall_s=round(wall, 1),
                cpu_s=round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
                load_at_start=round(load, 2), holdout_error=float(err.group(1)) if err else None)

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--threads', default='1,2', help='PyTorch CPU threads to compare')
    p.add_argument('--workers', default='0,2', help='DataLoader workers to compare')
    p.add_argument('--repeats', type=int, default=1)
    p.add_argument('--busy', type=int, default=0, help='other CPU-bound processes running meanwhile')
    p.add_argument('--name', default='demo', help='results go to bench/results/<name>.{csv,txt}')
    a = p.parse_args()
    from paddy_lib.data import make_demo_paddy
    tmp = Path(tempfile.mkdtemp())
    demo = make_demo_paddy(tmp/'demo')
    busy = [subprocess.Popen([sys.executable, '-c', BUSY]) for _ in range(a.busy)]
    rows = []
    try:
        for rep in range(a.repeats):
            for th, nw in itertools.product(map(int, a.threads.split(',')), map(int, a.workers.split(','))):
                r = dict(repeat=rep, busy=a.busy, **run_demo(th, nw, demo, tmp))
                print(r, flush=True); rows.append(r)
    finally:
        for b in busy: b.kill(); b.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    dev = f"CPU: {cpu_name()} ({os.cpu_count()} cores)"
    best = min(r['wall_s'] for r in rows)
    OUT.mkdir(parents=True, exist_ok=True)
    name = a.name
    with open(OUT/f'{name}.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=['device', *rows[0], 'wall_vs_best'])
        w.writeheader()
        for r in rows: w.writerow(dict(device=dev, **r, wall_vs_best=round(r['wall_s']/best, 2)))
    lines = [f"paddy demo, end to end ({dev}; {a.busy} busy process(es) started by the benchmark; the load average at each "
             f"start shows the rest of the machine's work); wall and CPU seconds, ratio to the fastest:"]
    lines += [f"  threads={r['threads']} num_workers={r['num_workers']}: wall {r['wall_s']:6.1f} s ({r['wall_s']/best:4.2f}x), "
              f"CPU {r['cpu_s']:6.1f} s, load at start {r['load_at_start']:.1f}, hold-out error {r['holdout_error']}" for r in rows]
    (OUT/f'{name}.txt').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))

if __name__ == '__main__': main()
