"""bench/gpu.py: `--smoke` runs every code path of the GPU proof on this CPU (tiny timm models, small images) and writes
its tables; the full mode refuses a machine without CUDA with one clear line."""
import math, os, subprocess, sys
from pathlib import Path
import pandas as pd, pytest, torch, timm, fastai
from paddy_lib import memory

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ('seed_table', 'find_accum', 'grad_accum', 'anatomy', 'claims')
META = ('device', 'torch', 'timm', 'fastai', 'date', 'mode')
SMOKE_EFF_BS = 16  # bench/gpu.py's --smoke: 16 items per optimizer step

def run_bench(*args, **env):
    "bench/gpu.py in a fresh process, one torch thread as CI runs it, CUDA hidden."
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'), 'MPLBACKEND': 'Agg',
           'PYTHONUNBUFFERED': '1', 'CUDA_VISIBLE_DEVICES': '', **env}
    return subprocess.run([sys.executable, str(ROOT/'bench'/'gpu.py'), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)

@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu-smoke')
    r = run_bench('--smoke', '--out', str(out))
    assert r.returncode == 0, r.stdout[-4000:] + '\n' + r.stderr[-4000:]
    return out

def one(out, pattern):
    found = sorted(out.glob(pattern))
    assert len(found) == 1, f'{pattern}: {found}'
    return found[0]

def table(out, section): return pd.read_csv(one(out, f'gpu_smoke_*_{section}.csv'))

def test_smoke_writes_every_file(smoke):
    names = sorted(f.name for f in smoke.iterdir())
    assert len(names) == len(SECTIONS) + 2, names  # a CSV a section, the TXT and the PNG: within the device's 8 files
    assert one(smoke, 'gpu_smoke_*.png').read_bytes()[:4] == b'\x89PNG'
    for s in SECTIONS:
        df = table(smoke, s)
        assert len(df), s
        assert df[list(META)].notna().all().all(), s
        assert set(df['mode']) == {'smoke'} and set(df.torch) == {torch.__version__}, s
        assert set(df.timm) == {timm.__version__} and set(df.fastai) == {fastai.__version__}, s
        assert df.device.iloc[0].startswith('CPU: '), s
    txt = one(smoke, 'gpu_smoke_*.txt').read_text()
    dev = table(smoke, 'claims').device.iloc[0]
    assert txt.startswith(f'GPU proof (smoke mode): {dev}; torch {torch.__version__}, timm {timm.__version__}, fastai {fastai.__version__}')
    for s in SECTIONS: assert f'== {s}\n' in txt, s
    assert '(not measured)' not in txt and 'FAILED' not in txt
    assert 'none of these figures is a GPU figure' in txt

def test_seed_table_and_line(smoke):
    t = table(smoke, 'seed_table')
    assert list(t.accum) == [1, 2, 4, 8]
    assert (t.bs * t.accum == SMOKE_EFF_BS).all()
    assert (t.peak_mib > 0).all() and (t.items_per_s > 0).all() and t.oom.isna().all()
    assert t[['line_predicted_mib', 'line_error', 'line_fixed_mib', 'line_per_item_mib']].map(math.isfinite).all().all()
    assert (t.line_predicted_mib > 0).all()
    assert ((t.line_predicted_mib / t.peak_mib - 1 - t.line_error).abs() < 1e-9).all()

def test_find_accum_under_each_budget(smoke):
    f = table(smoke, 'find_accum')
    assert set(f.config) == {'member 1', 'member 2', 'member 3', 'seed probe 1'}
    assert set(f.budget) == {'T4', 'P100', 'tiny'} and len(f) == 4*3
    named = {'T4': 15_843_721_216/2**20, 'P100': 16280., **getattr(memory, 'GPU_BUDGETS', {})}  # as bench/gpu.py reads them
    assert dict(zip(f.budget, f.budget_mib)) == {'T4': named['T4'], 'P100': named['P100'], 'tiny': 1}
    assert round(named['T4']) == 15110 and named['P100'] == 16280
    ok = f[f.budget != 'tiny']
    assert ok.error.isna().all() if 'error' in ok else True
    picks = ok.accum.astype(int)
    assert all(a >= 1 and a & (a-1) == 0 for a in picks), list(picks)  # powers of two
    assert (ok.measured_mib > 0).all() and (ok.predicted_mib > 0).all() and (ok.measured_mib <= ok.budget_mib).all()
    assert ok.prediction_error.abs().lt(0.5).all()
    first = ok[ok.how == 'find_accum']
    assert (first.probes >= 2).all() and first.probe_peaks.str.match(r'^(\d+:\d+ ?)+$').all()
    assert ok[ok.config == 'member 3'].how.str.startswith('same GPU batch as member 2').all()  # only its item differs
    assert ok.accum2_needed.notna().all() and ok.accum2_fits.all()
    tiny = f[f.budget == 'tiny'].set_index('config')
    assert tiny.drop('member 3').error.str.startswith('BudgetError').all()  # nothing fits 1 MiB: the no-fit path ran
    assert tiny.loc['member 3', 'how'].startswith('not measured')

def test_grad_accum_matches_one_big_batch(smoke):
    g = table(smoke, 'grad_accum')
    assert set(g.precision) == {'fp32', 'fp16', 'bf16'} and set(g.accum) == {1, 4}
    assert not g.amp_active.any()  # autocast is CUDA's: on a CPU every precision computes in fp32
    assert (g['items'] == 64).all() and (g.micro_bs * g.accum == 64).all() and (g.skipped_steps == 0).all()
    assert g.rel_error.map(math.isfinite).all() and (g.rel_error >= 0).all()
    assert g.norm_ratio.sub(1).abs().lt(1e-4).all()
    fp32 = g[g.precision == 'fp32']
    assert fp32[fp32.accum == 1].rel_error.max() == 0      # the same batch: the same gradient
    assert fp32[fp32.accum == 4].rel_error.max() < 1e-4    # no BatchNorm, float32: exact up to summation order

def test_anatomy_parts_and_peak(smoke):
    a = table(smoke, 'anatomy').set_index(['kind', 'part']).mib
    parts = ['weights', 'gradients', 'optimizer state', 'activations', 'input batch']
    assert all(a['estimate', p] > 0 for p in parts)
    assert math.isclose(a['estimate', 'total'], sum(a['estimate', p] for p in parts), rel_tol=1e-9)
    assert math.isclose(a['estimate', 'optimizer state'], 2*a['estimate', 'gradients'], rel_tol=1e-9)  # Adam: two a weight
    assert a['measured', 'peak (resident)'] >= a['measured', 'at entry'] > 0

def test_claims(smoke):
    c = table(smoke, 'claims')
    assert set(c.held.astype(str)) <= {'True', 'False', 'not applicable'}
    assert {'seed', 'course 03_memory', 'course 01_accumulation'} <= set(c.source)
    assert c.criterion.notna().all() and c.measured.notna().all()
    for b in ('T4', 'P100'): assert c.claim.str.contains(f'accum=2 was what I needed for every case" ({b}', regex=False).any(), b
    held = dict(zip(c.claim, c.held.astype(str)))
    assert held["GradAccum steps equal one big batch's (fp32, no BatchNorm)"] == 'True'
    assert held["find_accum's pick fits the budget it was found for"] == 'True'
    assert any('very close to going over' in k for k in held)

def test_full_mode_refuses_without_cuda(tmp_path):
    r = run_bench('--out', str(tmp_path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'needs a CUDA GPU' in lines[0] and '--smoke' in lines[0], r.stderr
    assert 'Traceback' not in r.stdout + r.stderr
    assert not any(tmp_path.iterdir())  # nothing written
