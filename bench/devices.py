#!/usr/bin/env python
"""`paddy demo` with its members side by side (`--devices cpu,cpu`) against one process, on this machine's cores.

    python bench/devices.py               # writes bench/results/devices_cpu.{csv,txt}

Each row is one fresh `python -m paddy_lib.cli demo --retrain --no-progress` in a subprocess, one PyTorch thread per
process (paddy demo's default): in this process (no `--devices`), in one worker process (`--devices cpu`: what a
worker costs to start) and in two (`--devices cpu,cpu`). The rows run interleaved, `--repeats` times. For each: wall
time, the members' minutes (records.csv), the weighted ensemble's hold-out error and the submission's SHA-1 (the
same file, or not). "on paper" is the wall time the hand-out would take with two workers from one process's member
minutes (each member to the worker that frees first, plus the rest of the run): what to expect elsewhere, e.g. two
T4s, from one GPU's figures.

Then the kill: a two-worker run is killed (SIGKILL, the whole process group, as a dead Kaggle session) once its first
member is saved; the run started again must load every member saved, train only the others, and write the same
submission as the runs above.
"""
import argparse, csv, hashlib, os, re, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/'bench'/'results'

def demo_cmd(out, devices, retrain=True):
    return [sys.executable, '-m', 'paddy_lib.cli', 'demo', '--out', str(out), '--no-progress',
            *(['--retrain'] if retrain else []), *(['--devices', devices] if devices else [])]

def sha(f): return hashlib.sha1(Path(f).read_bytes()).hexdigest()[:12]

def run_demo(devices, out, env):
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run(demo_cmd(out, devices), capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if r.returncode: raise SystemExit(f"paddy demo failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    err = re.search(r'ensemble: weighted average\s+\S+\s+([0-9.]+)', r.stdout)
    recs = pd.read_csv(out/'records.csv')
    return dict(devices=devices or 'this process', wall_s=round(wall, 1), member_min=list(recs.minutes.round(3)),
                holdout_error=float(err.group(1)), submission=sha(out/'submission.csv'))

def on_paper(member_min, wall_s, n_workers):
    "Wall time with `n_workers`, each member handed to the first worker free, from one process's member minutes."
    free = [0.]*n_workers
    for m in member_min: free[free.index(min(free))] += 60*m
    return round(wall_s - 60*sum(member_min) + max(free), 1)  # the rest of the run (imports, data, TTA-free parts) as it was

def kill_and_resume(out, env, expect_sha):
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.Popen(demo_cmd(out, 'cpu,cpu'), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env,
                         start_new_session=True)
    t0 = time.time()
    while not list((out/'members').glob('*.pt')) and p.poll() is None: time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    killed_at = time.time() - t0
    time.sleep(2)
    saved = len(list((out/'members').glob('*.pt')))
    t0 = time.perf_counter()
    r = subprocess.run(demo_cmd(out, 'cpu,cpu', retrain=False), capture_output=True, text=True, cwd=ROOT, env=env)
    if r.returncode: raise SystemExit(f"the resumed paddy demo failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    status = list(pd.read_csv(out/'records.csv').status)
    return dict(killed_after_s=round(killed_at, 1), saved_when_killed=saved, resumed_wall_s=round(time.perf_counter()-t0, 1),
                resumed_status=status, same_submission=sha(out/'submission.csv') == expect_sha)

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=1)
    p.add_argument('--name', default='devices_cpu', help='results go to bench/results/<name>.{csv,txt}')
    a = p.parse_args()
    from paddy_lib.data import make_demo_paddy
    from paddy_lib.core import device_name
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, 'PADDY_DEMO': str(make_demo_paddy(tmp/'demo')), 'OMP_NUM_THREADS': '1'}
    rows = []
    try:
        for rep in range(a.repeats):
            for devices in (None, 'cpu', 'cpu,cpu'):
                r = dict(repeat=rep, load_at_start=round(os.getloadavg()[0], 2), **run_demo(devices, tmp/'out', env))
                print(r, flush=True); rows.append(r)
        kill = kill_and_resume(tmp/'kill', env, rows[0]['submission'])
        print(kill, flush=True)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    dev = device_name('cpu')
    mean = lambda d: sum(r['wall_s'] for r in rows if r['devices'] == d) / a.repeats
    one, two = mean('this process'), mean('cpu,cpu')
    paper = [on_paper(r['member_min'], r['wall_s'], 2) for r in rows if r['devices'] == 'this process']
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT/f'{a.name}.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=['device', *rows[0], 'wall_vs_this_process'])
        w.writeheader()
        for r in rows: w.writerow(dict(device=dev, **r, wall_vs_this_process=round(r['wall_s']/mean('this process'), 2)))
    lines = [f"paddy demo (DEMO_CONFIGS, {len(rows[0]['member_min'])} members, one PyTorch thread per process) on {dev}; "
             f"{a.repeats} repeat(s), interleaved:"]
    lines += [f"  {r['devices']:>12}: wall {r['wall_s']:6.1f} s ({r['wall_s']/one:4.2f}x this process), members "
              f"{', '.join(f'{m*60:.0f}' for m in r['member_min'])} s, hold-out error {r['holdout_error']:.3f}, "
              f"submission {r['submission']} (load at start {r['load_at_start']})" for r in rows]
    lines += [f"two workers vs this process: {one/two:.2f}x faster (mean wall {one:.1f} s -> {two:.1f} s); on paper, from "
              f"this process's member times: {sum(paper)/len(paper):.1f} s",
              f"the same submission in every row: {len({r['submission'] for r in rows}) == 1}",
              f"killed (SIGKILL to the process group) {kill['killed_after_s']} s into a two-worker run, with "
              f"{kill['saved_when_killed']} member(s) saved; run again: {kill['resumed_wall_s']} s, members "
              f"{kill['resumed_status']}, the same submission: {kill['same_submission']}"]
    (OUT/f'{a.name}.txt').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))

if __name__ == '__main__': main()
