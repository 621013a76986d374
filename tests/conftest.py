"Fixtures for the tests: a local Kaggle, no credentials, no internet (tests/test_kaggle.py); one PyTorch thread; 03_memory's kernel run started early (tests/test_memory_kernel.py)."
import shutil, signal, subprocess, tempfile
from pathlib import Path
import pytest, torch
from paddy_lib.data import COMP, make_demo_paddy
from paddy_lib.testing import LocalKaggle, loopback_only

KAGGLE_CRED_VARS = ('KAGGLE_USERNAME', 'KAGGLE_KEY', 'KAGGLE_API_TOKEN', 'KAGGLE_CONFIG_DIR', 'XDG_CONFIG_HOME',
                    'KAGGLE_API_ENVIRONMENT', 'KAGGLE_KERNEL_RUN_TYPE')

@pytest.fixture
def kaggle_empty_home(tmp_path, monkeypatch):
    "An empty HOME and Kaggle config folder, and no Kaggle variables: a machine without Kaggle credentials."
    home = tmp_path/'home'
    home.mkdir()
    monkeypatch.setenv('HOME', str(home))
    for k in KAGGLE_CRED_VARS: monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('KAGGLE_CONFIG_DIR', str(home/'.kaggle'))
    return home

@pytest.fixture
def kaggle_no_internet():
    "Refuse (and record) every connection or name lookup that is not the loopback; fail the test if one was tried."
    with loopback_only() as attempts: yield attempts
    assert attempts == [], f"connections tried to leave the machine: {attempts}"

@pytest.fixture(scope='session')
def kaggle_demo_data(tmp_path_factory):
    "A small demo Paddy dataset: the competition's data on the local Kaggle, and the reference for submissions."
    return make_demo_paddy(tmp_path_factory.mktemp('kaggle-demo')/'paddy', n_train=80, n_test=12)

@pytest.fixture
def local_kaggle(kaggle_empty_home, kaggle_no_internet, kaggle_demo_data):
    "A running `LocalKaggle` (user 'paddy-student') the environment points the real kaggle client at."
    with LocalKaggle(competitions={COMP: kaggle_demo_data}, timeout=120) as lk: yield lk

@pytest.fixture(scope='module')
def one_thread():
    "One PyTorch thread for these tests: on a small shared CPU, several threads wait for each other (bench/demo.py)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

_MEMORY_KERNEL = {}  # tests/test_memory_kernel.py's run of 03_memory in a real kernel: (process, folder), once started

def pytest_collection_finish(session):
    "Start that run as soon as its tests are collected: it runs on the core the first test files leave idle."
    if session.config.option.collectonly: return
    mods = {item.module for item in session.items if item.path.name == 'test_memory_kernel.py' and 'executed' in item.fixturenames}
    if mods:
        work = Path(tempfile.mkdtemp(prefix='paddy-memory-kernel-'))
        _MEMORY_KERNEL['run'] = (mods.pop().start_run(work), work)

def pytest_sessionfinish(session):
    "Stop the run if no test waited for it (an interrupted session), and remove its folder."
    if 'run' not in _MEMORY_KERNEL: return
    proc, work = _MEMORY_KERNEL.pop('run')
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # nbclient shuts its kernel down on the way out
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
    shutil.rmtree(work, ignore_errors=True)

@pytest.fixture(scope='session')
def memory_kernel_run():
    "The (process, folder) of the run started at collection; None if none was started."
    return _MEMORY_KERNEL.get('run')
