"""Run nbs/03_memory.ipynb in a real Jupyter kernel (nbclient + ipykernel), so that its ipyexperiments cells run.

`nbdev-test` executes notebooks in its own shell, where ipyexperiments can't work (it reads the kernel's namespace and
hooks cell execution), so there the notebook skips those cells. Here they run, on a copy of the notebook in a temporary
folder, with the cells `nbdev-test` skips (`#| cuda`, `#| slow`, `#| notest`, `#| eval: false`) left out the same way.

The run (over a minute of one core) is this file run as a script, in its own process: tests/conftest.py starts it as
soon as pytest has collected these tests, so it runs on the core the first test files leave idle (they train in one
process with one thread), and `executed` waits for it. Run alone, this file starts it itself.
"""
import os, re, subprocess, sys
from pathlib import Path
import pytest

if __name__ == '__main__':  # the run itself: `python tests/test_memory_kernel.py WORK_DIR`
    import nbformat, nbclient
    _work = Path(sys.argv[1])
    _nb = nbformat.read(_work/'03_memory.ipynb', as_version=4)
    nbclient.NotebookClient(_nb, kernel_name='python3', timeout=900, resources={'metadata': {'path': str(_work)}}).execute()
    nbformat.write(_nb, _work/'executed.ipynb')
    sys.exit(0)

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')
pytest.importorskip('ipyexperiments')
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT/'nbs'/'03_memory.ipynb'
KERNEL = 'python3'  # the kernel ipykernel installs
SKIPPED = re.compile(r'^\s*#\s*\|\s*(?:(?:cuda|slow|notest)\s*$|eval:\s*false)', re.M)

def _text(cell) -> str:
    "Everything a cell printed or displayed, as text."
    out = []
    for o in cell.get('outputs', []):
        if o.output_type == 'stream': out.append(o.text)
        elif o.output_type in ('execute_result', 'display_data'): out.append(o.data.get('text/plain', ''))
        elif o.output_type == 'error': out.append('\n'.join(o.traceback))
    return ''.join(out)

def _cell(nb, snippet, exact=False):
    "The one code cell whose source contains `snippet` (or is exactly `snippet`)."
    cells = [c for c in nb.cells if c.cell_type == 'code' and (c.source.strip() == snippet if exact else snippet in c.source)]
    assert len(cells) == 1, f"{len(cells)} cells contain {snippet!r}"
    return cells[0]

def start_run(work:Path)->subprocess.Popen:
    "Copy the notebook, less the cells nbdev-test skips and with no outputs, into `work`, and start its run there."
    nb = nbformat.read(NB, as_version=4)
    nb.cells = [c for c in nb.cells if c.cell_type != 'code' or not SKIPPED.search(c.source)]
    for c in nb.cells:
        if c.cell_type == 'code': c.outputs, c.execution_count = [], None
    nbformat.write(nb, work/NB.name)  # a copy: the committed notebook is never touched
    # the kernel imports this checkout's paddy_lib, installed or not
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])}
    with open(work/'run.log', 'w') as log:
        return subprocess.Popen([sys.executable, __file__, str(work)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)

@pytest.fixture(scope='module')
def executed(memory_kernel_run, tmp_path_factory):
    "The notebook, executed top to bottom in a fresh `python3` kernel, in a temporary folder."
    try: KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel: pytest.skip(f"no {KERNEL!r} Jupyter kernel: `pip install ipykernel`")
    if memory_kernel_run is None: memory_kernel_run = (start_run(work := tmp_path_factory.mktemp('nb')), work)
    proc, work = memory_kernel_run  # (the run, its folder), started by conftest.py when these tests were collected
    try: rc = proc.wait(timeout=1800)
    except subprocess.TimeoutExpired: proc.kill(); proc.wait(); rc = 'killed after 30 minutes'
    assert rc == 0, f"the kernel run failed ({rc}):\n" + (work/'run.log').read_text()[-6000:]
    return nbformat.read(work/'executed.ipynb', as_version=4)

def test_runs_in_a_real_kernel(executed):
    "The kernel is a real ipykernel: the notebook's own check says so, and every kept cell ran without error."
    assert all(c.execution_count for c in executed.cells if c.cell_type == 'code' and c.source.strip())
    assert not any(o.output_type == 'error' for c in executed.cells for o in c.get('outputs', []))
    start = _text(_cell(executed, 'exp = IPyExperimentsCPU()'))
    assert 'Not in a Jupyter kernel' not in start

def test_ipyexperiments_cells_ran(executed):
    "The experiment started, logged the cells inside it, and on finishing deleted their variables and reported memory."
    start = _text(_cell(executed, 'exp = IPyExperimentsCPU()'))
    assert 'Experiment started with the CPU-only backend' in start and '*** Current state:' in start
    inside = _text(_cell(executed, 'learn = short_run()\nxb, yb = learn.dls.one_batch()', exact=True))
    assert 'Consumed' in inside and 'Peaked' in inside and 'CPU:' in inside  # the cell logger's per-cell report
    end = _text(_cell(executed, 'exp_data = exp.finish()'))
    assert '*** Experiment memory:' in end
    deleted = re.search(r'Deleted: (.*)', end)
    assert deleted and {'learn', 'xb', 'yb'} <= {v.strip() for v in deleted.group(1).split(',')}, end
    m = re.search(r"ipyexperiments: the experiment's cells consumed (-?[\d,]+) MiB, (-?[\d,]+) MiB came back", end)
    assert m, end
    consumed, back = (int(g.replace(',', '')) for g in m.groups())  # "back" can print as -0: read before malloc_trim
    assert consumed > 50  # a learner's worth of memory (ipyexperiments' "reclaimed" is taken before the C heap gives
                          # freed pages back, so it can read 0: the notebook's own line below is after `malloc_trim`)
    after = re.search(r'after the experiment: ([+-][\d,]+) MiB over its start', end)
    assert after and int(after.group(1).replace(',', '')) < consumed/4, end  # back near the start (RSS moves 10s of MiB)

def test_committed_outputs_show_the_skip():
    "Under nbdev-test (whose outputs are committed) the same cells stepped aside and said why."
    nb = nbformat.read(NB, as_version=4)
    assert 'Not in a Jupyter kernel' in _text(_cell(nb, 'exp = IPyExperimentsCPU()'))
