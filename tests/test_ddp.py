"GradAccum under DDP (2 processes, gloo, CPU): one all-reduce per optimizer step, the big batch's weights; fastai's beside it."
import subprocess, sys
from pathlib import Path
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

def test_grad_accum_under_ddp_syncs_once_per_step_and_is_exact(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'ddp.py'), '--out', str(tmp_path)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(next(tmp_path.glob('ddp_*.csv'))).set_index('callback')
    ours, fastai = df.loc['GradAccum'], df.loc['GradientAccumulation']
    assert (ours.world, ours.micro_batches, ours.steps) == (2, 16, 4)
    assert ours.allreduce == ours.steps                  # no_sync on the 3 micro-batches of each step that don't step
    assert ours.max_diff < 1e-6 * max(1, ours.max_weight)  # one process's big batch, to float32 rounding
    assert fastai.allreduce == fastai.micro_batches      # fastai all-reduces every micro-batch
    assert fastai.max_diff > 1e-3                        # and counts one rank's items: 2 steps of 128, not 4 of 64
    assert 'NVIDIA' in df.loc['fastai _broadcast', 'error'] or 'CUDA' in df.loc['fastai _broadcast', 'error']
