"""GradAccum under DDP (2 processes, gloo, CPU): one all-reduce per optimizer step, the big batch's weights; fastai's beside it.

bench/ddp.py's own three runs, the same items and callbacks, in 2 processes forked from this one: the same
`worker()` torchrun starts in `python bench/ddp.py` (which 01_accumulation runs), without torchrun and a second import
of fastai in each process."""
import importlib.util, json, multiprocessing, os, socket, traceback
from pathlib import Path
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('bench_ddp', ROOT/'bench'/'ddp.py')
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)

def _rank(rank:int, port:int, out:Path):
    "One DDP process: the environment torchrun would give it, then the bench's worker; its rows or its traceback to `out`."
    try:
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE=str(bench.WORLD), RANK=str(rank),
                          LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(bench.WORLD), GROUP_RANK='0', CUDA_VISIBLE_DEVICES='')
        import torch
        from accelerate.state import AcceleratorState
        torch.set_num_threads(1)
        AcceleratorState._reset_state(reset_partial_state=True)  # a fresh process's Accelerate state, not pytest's
        res = dict(rows=bench.worker())
    except BaseException: res = dict(error=traceback.format_exc())
    (out/f'rank{rank}.json').write_text(json.dumps(res))

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.mark.skipif('fork' not in multiprocessing.get_all_start_methods(), reason='forks the test process')
def test_grad_accum_under_ddp_syncs_once_per_step_and_is_exact(tmp_path):
    ctx, port = multiprocessing.get_context('fork'), free_port()
    ps = [ctx.Process(target=_rank, args=(r, port, tmp_path)) for r in range(bench.WORLD)]
    for p in ps: p.start()
    for p in ps: p.join(timeout=300)
    for p in ps:
        if p.is_alive(): p.kill(); p.join()
    res = [json.loads(f.read_text()) if (f := tmp_path/f'rank{r}.json').exists() else dict(error=f'rank {r} wrote nothing')
           for r in range(bench.WORLD)]
    assert not any('error' in r for r in res), '\n'.join(r.get('error', '') for r in res)
    assert [p.exitcode for p in ps] == [0]*bench.WORLD
    df = pd.read_csv(bench.write(res[0]['rows'], tmp_path, 0)).set_index('callback')   # through the bench's own CSV
    ours, fastai = df.loc['GradAccum'], df.loc['GradientAccumulation']
    assert (ours.world, ours.micro_batches, ours.steps) == (2, 16, 4)
    assert ours.allreduce == ours.steps                  # no_sync on the 3 micro-batches of each step that don't step
    assert ours.max_diff < 1e-6 * max(1, ours.max_weight)  # one process's big batch, to float32 rounding
    assert fastai.allreduce == fastai.micro_batches      # fastai all-reduces every micro-batch
    assert fastai.max_diff > 1e-3                        # and counts one rank's items: 2 steps of 128, not 4 of 64
    assert 'NVIDIA' in df.loc['fastai _broadcast', 'error'] or 'CUDA' in df.loc['fastai _broadcast', 'error']
    assert res[1]['rows'] == []                           # rank 1 reports nothing: rank 0 holds the results
