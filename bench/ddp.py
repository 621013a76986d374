"""GradAccum under DDP: one all-reduce per optimizer step, and the big batch's weights, against fastai's callback.

    python bench/ddp.py [--out DIR]     # bench/results/ddp_<device>.{csv,txt}; about 12 s on 2 CPU cores

Launches itself with `torchrun --nproc_per_node 2` on the gloo backend (CPU): `fit_one_cycle(1)` on 256 items with
`GradAccum(64)` and `StepSchedule(64)`
and one with fastai's `GradientAccumulation(64)` under fastai's `distrib_ctx`, each against one process that takes one
batch of the same 64 items per step. Micro-batches of 8 items on each of the 2 ranks: 4 per step. A DDP communication
hook counts the all-reduces. A third run, in the same processes, puts back fastai's own `DistributedDL._broadcast` to
record that it fails on gloo without a GPU (paddy_lib.accumulation patches it).

`worker()` is the part that runs in each process: tests/test_ddp.py runs it in 2 processes forked from pytest (no
torchrun, no second import of fastai), with the same items and checks."""
import argparse, csv, json, os, subprocess, sys, time, warnings
from pathlib import Path

N, EFF_BS, BS, WORLD = 256, 64, 8, 2

def worker()->list:
    "This process's part of the three runs (`WORLD_SIZE`, `RANK` and the rendezvous from the environment): rank 0's rows."
    warnings.filterwarnings('ignore')
    import torch, torch.distributed as dist
    from torch import nn
    from fastai.basics import Learner, DataLoaders, DataLoader, Callback, SGD, noop
    from fastai.callback.progress import ProgressCallback
    from fastai.callback.training import GradientAccumulation
    import fastai.callback.schedule  # Learner.fit_one_cycle
    import fastai.distributed as fd
    from paddy_lib.accumulation import GradAccum, StepSchedule  # also makes `DistributedDL._broadcast` device-agnostic
    ours, fastai_own = fd.DistributedDL._broadcast, fd.DistributedDL._orig__broadcast  # fastcore's `patch` keeps fastai's
    assert ours is not fastai_own

    class CountAllReduce(Callback):
        "Count DDP's gradient all-reduces (one bucket: the model is small)."
        order = 12  # after `DistributedTrainer` (11) wrapped the model
        def before_fit(self):
            self.n = 0
            if not isinstance(self.learn.model, nn.parallel.DistributedDataParallel): return
            def hook(state, bucket):
                self.n += 1
                fut = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True).get_future()
                return fut.then(lambda f: f.value()[0])
            self.learn.model.register_comm_hook(None, hook)

    def learner(x, y, bs, cbs):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))  # no BatchNorm: exact is possible
        dls = DataLoaders(DataLoader(list(zip(x, y)), bs=bs), DataLoader(list(zip(x[:16], y[:16])), bs=16))
        learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), opt_func=SGD, lr=0.1, cbs=cbs)
        learn.remove_cb(ProgressCallback); learn.logger = noop
        return learn

    def weights(learn): return torch.cat([p.detach().flatten() for p in learn.model.parameters()])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 8, generator=g); y = x[:, :3].argmax(1)
    world, rank = int(os.environ['WORLD_SIZE']), int(os.environ['RANK'])
    # `DistributedDL` gives rank r the r-th contiguous slice: a step's items are each rank's next EFF_BS//world
    per = EFF_BS//world
    order = [i for s in range(N//EFF_BS) for r in range(world) for i in range(r*N//world + s*per, r*N//world + (s+1)*per)]
    rows = []
    for name, cb in [('GradAccum', lambda: [GradAccum(EFF_BS), StepSchedule(EFF_BS)]), ('GradientAccumulation', lambda: [GradientAccumulation(EFF_BS)])]:
        count = CountAllReduce()
        learn = learner(x, y, BS, [*cb(), count])
        with learn.distrib_ctx(sync_bn=False, cpu=True): learn.fit_one_cycle(1, 0.1)
        ref = learner(x[order], y[order], EFF_BS, [])
        ref.fit_one_cycle(1, 0.1)
        wr = weights(ref)
        rows.append(dict(callback=name, world=world, items=N, eff_bs=EFF_BS, bs=BS, micro_batches=N//world//BS,
                         steps=N//EFF_BS, allreduce=count.n, max_diff=(weights(learn)-wr).abs().max().item(),
                         max_weight=wr.abs().max().item(), error=''))
    # last, as it leaves the run broken: fastai's own `_broadcast`, which every rank calls before any all-reduce
    learn, error = learner(x, y, BS, [GradAccum(EFF_BS), StepSchedule(EFF_BS)]), ''
    fd.DistributedDL._broadcast = fastai_own
    try:
        with learn.distrib_ctx(sync_bn=False, cpu=True): learn.fit_one_cycle(1, 0.1)
    except Exception as e: error = f'{type(e).__name__}: {e}'.splitlines()[-1][:200]
    finally: fd.DistributedDL._broadcast = ours
    rows.append(dict(callback='fastai _broadcast', error=error))  # empty if it did not fail
    return rows if rank == 0 else []

def launch()->list:
    "The three runs in `WORLD` processes started by torchrun: rank 0's rows."
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={WORLD}', '--standalone', __file__, '--worker']
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': ''}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.startswith('{')]
    if r.returncode or not rows: sys.exit(f"the DDP run printed no result (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return rows

def write(rows:list, out, seconds:float)->Path:
    "`ddp_<device>.csv` and `.txt` in `out`; the CSV's path."
    from paddy_lib.core import device_name
    dev = device_name('cpu')
    for r in rows: r['device'] = dev
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    name = 'ddp_' + dev.split(':')[0].lower()
    cols = ['callback', 'world', 'items', 'eff_bs', 'bs', 'micro_batches', 'steps', 'allreduce', 'max_diff', 'max_weight', 'error', 'device']
    with open(out/f'{name}.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, cols); w.writeheader(); w.writerows(rows)
    lines = [f"{dev}; gloo, {WORLD} processes; {seconds:.0f} s"] + [
        (f"{r['callback']}: {r['allreduce']} all-reduces for {r['micro_batches']} micro-batches and {r['steps']} steps; "
         f"weights vs one process's big batch: max |diff| {r['max_diff']:.1e} (max |w| {r['max_weight']:.2f})")
        if r['callback'] != 'fastai _broadcast' else f"{r['callback']}: {r['error'] or 'did not fail'}" for r in rows]
    (out/f'{name}.txt').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return out/f'{name}.csv'

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=str(Path(__file__).parent/'results'))
    p.add_argument('--worker', action='store_true')
    a = p.parse_args()
    if a.worker:
        for r in worker(): print(json.dumps(r), flush=True)
        return
    t0 = time.time()
    rows = launch()
    write(rows, a.out, time.time()-t0)

if __name__ == '__main__': main()
