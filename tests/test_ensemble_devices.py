"`run_ensemble(devices=...)`: members in worker processes, one per device; the same results, errors, kills and resumes."
import os, signal, subprocess, sys, time, warnings
from pathlib import Path

import pandas as pd, psutil, pytest, torch
from fastai.callback.core import Callback

from paddy_lib.core import PaddyError
from paddy_lib.data import get_test_files
from paddy_lib.ensemble import Member, run_ensemble, member_file, _devices

from test_ensemble import FAST, A, B, data  # its tiny members, and its data fixture

C = Member('test_resnet', ('pad', 96), 32, accum=1)
D = Member('test_resnet', ('squish', 96), 48, accum=2)

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py: one PyTorch thread


def _crops(learn)->bool: return any(str(getattr(t, 'method', '')) == 'crop' for t in learn.dls.train.after_item.fs)


class FailOnCrop(Callback):
    "A member resized by cropping fails as it starts (importable here: a worker process can build it)."
    in_member_key = False
    def before_fit(self):
        if _crops(self.learn): raise ValueError('no crops today')


class DieOnCrop(Callback):
    "The worker training a cropped member dies outright, as one killed for memory would (no exception, no message)."
    in_member_key = False
    def before_fit(self):
        if _crops(self.learn): os._exit(9)


class HoldsALock(Callback):
    "A callback that can't be pickled (out of the key, which would refuse it otherwise)."
    in_member_key = False
    def __init__(self): import threading; self.lock = threading.Lock()


class SlowFit(Callback):
    "Every fit takes at least a second (not part of the member key)."
    in_member_key = False
    def before_fit(self): time.sleep(1)


def _workers(p)->list:
    "The live worker processes under `p` (spawned by multiprocessing; zombies and the resource tracker left out)."
    out = []
    for c in p.children(recursive=True):
        try:
            if c.status() != psutil.STATUS_ZOMBIE and 'spawn_main' in ' '.join(c.cmdline()): out.append(c)
        except psutil.Error: pass  # gone meanwhile
    return out


def test_devices_are_named_and_checked(monkeypatch):
    assert _devices(None) is None
    assert _devices('cpu, cpu') == _devices(['cpu', 'cpu']) == ['cpu', 'cpu']
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    with pytest.raises(PaddyError, match=r"no cuda:0: it has 0 GPU\(s\); name one per worker, e.g. --devices cuda:0,cuda:1"): _devices('cuda:0,cuda:1')
    with pytest.raises(PaddyError, match=r"'gpu0' is not 'cpu' or 'cuda:N'"): _devices('cpu,gpu0')
    with pytest.raises(PaddyError, match='none given'): _devices('')
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)  # Kaggle's two T4s
    assert _devices('cuda') == ['cuda:0'] and _devices('cuda:0,cuda:1') == ['cuda:0', 'cuda:1']
    with pytest.raises(PaddyError, match='has no cuda:2: it has 2 GPU\\(s\\), cuda:0 to cuda:1'): _devices('cuda:2')
    with pytest.raises(PaddyError, match='mixes CPU and GPU'): _devices('cuda:0,cpu')
    with pytest.raises(PaddyError, match='cuda:1 is named twice'): _devices('cuda:1,cuda:0,cuda:1')


def test_what_a_worker_cannot_import_fails_before_any_training(data, tmp_path, monkeypatch):
    "A callback from a notebook (`__main__`), or holding a lock, can't reach a spawned process: said at once, nothing trained."
    Notebooks = type('InANotebook', (Callback,), {'__module__': '__main__', 'in_member_key': False})
    monkeypatch.setattr(sys.modules['__main__'], 'InANotebook', Notebooks, raising=False)  # as a notebook cell defines it
    for kw, what in [(dict(cbs=Notebooks()), r'defined in this notebook or script \(__main__\)'),
                     (dict(cbs=HoldsALock()), r"TypeError: cannot pickle '_thread.lock' object")]:
        with pytest.raises(PaddyError, match=what) as e: run_ensemble([A], data, tmp_path/'no', devices='cpu', **kw, **FAST)
        assert 'define callbacks, loss functions and the like in a module' in str(e.value)
    assert not list((tmp_path/'no'/'members').glob('*.pt'))


def test_side_by_side_gives_what_one_process_gives(data, tmp_path):
    "Two CPU workers train the members each would have trained alone, to the bit; both workers take members; all saved."
    here = run_ensemble([A, B, C], data, tmp_path/'here', **FAST, log=lambda l: None)
    logs = []
    apart = run_ensemble([A, B, C], data, tmp_path/'apart', devices='cpu,cpu', **FAST, log=logs.append)
    assert apart.status == here.status == ['trained']*3
    for h, a in zip(here.results, apart.results):
        for k in ('test_preds', 'holdout_preds'): assert torch.equal(h[k], a[k]), k
        assert a['record']['key'] == h['record']['key']  # where the work ran is not part of what a member is
    assert '2 worker process(es): cpu, cpu' in logs[0]
    for w in ('[cpu#1] member ', '[cpu#2] member '): assert any(l.startswith(w) for l in logs), (w, logs)
    assert all((tmp_path/'apart'/'members'/member_file('', m, r['record']['key']).name).exists() for m, r in apart.done)
    assert (tmp_path/'apart'/'records.csv').read_text().count('trained') == 3
    again = run_ensemble([A, B, C], data, tmp_path/'apart', devices='cpu,cpu', **FAST, log=lambda l: None)
    assert again.status == ['loaded']*3  # saved by the workers, found by any run: no process is started for nothing
    assert torch.equal(again.probs(), here.probs())


def test_a_worker_error_reaches_the_caller_after_the_others_finish(data, tmp_path):
    "B fails in one worker; A, already training in the other, finishes and is saved; C is not started; then the error."
    out, logs = tmp_path/'err', []
    with pytest.raises(ValueError, match='no crops today') as e:
        run_ensemble([B, A, C], data, out, devices='cpu,cpu', cbs=FailOnCrop(), **FAST, log=logs.append)
    assert any('(in the worker process on cpu#1)' in n for n in getattr(e.value, '__notes__', []))
    assert len(list((out/'members').glob('*.pt'))) == 1  # A's
    assert list(pd.read_csv(out/'records.csv').status) == ['failed', 'trained', 'not started']
    assert run_ensemble([B, A, C], data, out, **FAST, log=lambda l: None).status == ['trained', 'loaded', 'trained']


def test_a_worker_that_dies_fails_its_member_and_the_others_go_on(data, tmp_path):
    "B's worker dies (exit code 9); A trains on the other; C, handed to it, trains; the submission is written without B."
    logs = []
    run = run_ensemble([B, A, C], data, tmp_path/'died', devices='cpu,cpu', cbs=DieOnCrop(), **FAST, log=logs.append)
    assert run.status == ['failed', 'trained', 'trained'], run.status
    assert run.reasons[1] == 'its worker process on cpu#1 died (exit code 9)'
    assert any('member 1: the worker process died (exit code 9); the others go on' in l for l in logs)
    assert len(run.write_submission(tmp_path/'sub.csv')) == len(get_test_files(data))


def test_ctrl_c_stops_the_workers_and_says_what_is_saved(data, tmp_path):
    "Ctrl-C in the parent (here: raised by its `log` as a worker's first line arrives): no worker process is left."
    logs = []
    def log(line):
        logs.append(line)
        if line.startswith('[cpu#1]   recipe'): raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): run_ensemble([A, B], data, tmp_path/'ctrl-c', devices='cpu,cpu', **FAST, log=log)
    assert any(l.startswith('\ninterrupted: 0 finished member(s) are saved in') for l in logs), logs
    assert not _workers(psutil.Process())


def test_time_limit_holds_with_workers(data, tmp_path):
    "One worker, half a second allowed: the first member trains, the second is not started, and the submission is written."
    run = run_ensemble([A, B], data, tmp_path/'limit', devices='cpu', cbs=SlowFit(), time_limit=0.5/3600, **FAST, log=lambda l: None)
    assert run.status == ['trained', 'not started'] and 'would end after the time limit' in run.reasons[2]
    assert len(run.write_submission(tmp_path/'sub.csv')) == len(get_test_files(data))


KILLED = """
import sys, torch; torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_ensemble_devices import A, B, C, D, FAST, SlowFit
from paddy_lib.ensemble import run_ensemble
if __name__ == '__main__': run_ensemble([A, B, C, D], {data!r}, {out!r}, devices='cpu,cpu', cbs=SlowFit(), **FAST)
"""

def test_killed_mid_run_stops_its_workers_and_resumes(data, tmp_path):
    "SIGKILL the run once a member is saved: its workers stop too, and the next run loads what was saved, trains the rest."
    out = tmp_path/'killed'
    script = tmp_path/'run.py'
    script.write_text(KILLED.format(tests=str(Path(__file__).parent), data=str(data), out=str(out)))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers, t0 = [], time.time()
    try:
        while not list((out/'members').glob('*.pt')) and time.time() - t0 < 240:
            workers = _workers(psutil.Process(p.pid)) or workers; time.sleep(0.2)
        assert len(workers) == 2, workers
    finally: p.kill(); p.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, alive  # the workers noticed their parent was gone and stopped
    saved = {f.name for f in (out/'members').glob('*.pt')}
    logs = []
    run = run_ensemble([A, B, C, D], data, out, **FAST, log=logs.append)
    assert run.status.count('loaded') == len(saved) >= 1 and set(run.status) <= {'loaded', 'trained'}
    assert sum('already done' in l for l in logs) == len(saved)


def test_each_worker_sees_only_its_gpu_and_a_share_of_the_threads(monkeypatch):
    "What a GPU worker starts with, checked without a GPU: the environment each process is started in."
    import paddy_lib.ensemble as ens
    started, warned = [], []
    class Proc:
        def __init__(self, target, args, name): self.name = name
        def start(self):
            started.append((self.name, os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ['OMP_NUM_THREADS']))
            warned.append(os.environ['PYTHONWARNINGS'])
    class Ctx:
        Process, Queue = Proc, staticmethod(lambda: None)
    monkeypatch.setattr(ens.mp, 'get_context', lambda kind: Ctx)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '2,3')  # this process sees two of a machine's cards: cuda:0 is card 2
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 4)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='A notice this process silenced')
        warnings.filterwarnings('ignore', message='.*a regex.*')  # PYTHONWARNINGS can't say it: left out
        ens._start_workers(['cuda:0', 'cuda:1'], None)
        ens._start_workers(['cpu', 'cpu', 'cpu'], None)
    assert all('ignore:A notice this process silenced' in w and 'a regex' not in w for w in warned)  # its imports stay quiet
    assert started == [('paddy cuda:0', '2', '2'), ('paddy cuda:1', '3', '2'),
                       ('paddy cpu#1', '', '1'), ('paddy cpu#2', '', '1'), ('paddy cpu#3', '', '1')]
    assert os.environ['CUDA_VISIBLE_DEVICES'] == '2,3'  # this process's own, put back


def test_in_a_real_jupyter_kernel(data, tmp_path):
    "From a notebook (ipykernel's `__main__`): workers start and train, and a cell's own callback is refused by name."
    nbformat, nbclient = pytest.importorskip('nbformat'), pytest.importorskip('nbclient')
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try: KernelSpecManager().get_kernel_spec('python3')
    except NoSuchKernel: pytest.skip("no 'python3' Jupyter kernel: `pip install ipykernel`")
    setup = (f"import sys, torch; torch.set_num_threads(1); sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
             f"from test_ensemble_devices import A, B, FAST\nfrom paddy_lib.ensemble import run_ensemble\nfrom fastai.callback.core import Callback")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in [
        setup,
        f"print(run_ensemble([A, B], {str(data)!r}, {str(tmp_path/'nb')!r}, devices='cpu,cpu', **FAST).status)",
        "class Mine(Callback): in_member_key = False\n"
        f"try: run_ensemble([A], {str(data)!r}, {str(tmp_path/'nb2')!r}, devices='cpu', cbs=Mine(), **FAST)\n"
        "except Exception as e: print(type(e).__name__, e)"]])
    nbclient.NotebookClient(nb, kernel_name='python3', timeout=600).execute()
    out = [''.join(o.get('text', '') for o in c.outputs) for c in nb.cells]
    assert "['trained', 'trained']" in out[1] and '[cpu#1] member ' in out[1] and '[cpu#2] member ' in out[1], out[1]
    assert 'PaddyError' in out[2] and 'defined in this notebook or script (__main__)' in out[2], out[2]
