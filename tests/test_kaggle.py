"""paddy_lib.kaggle against a local Kaggle: the real `kaggle` client pushes every course notebook, the library's wheels
and a submission to `LocalKaggle` (paddy_lib.testing) on 127.0.0.1, and the tests check the bytes that arrived. No
request leaves the machine: `loopback_only` (fixture `kaggle_no_internet`) refuses and records any other connection."""
import base64, hashlib, json, os, re, subprocess, sys, textwrap, warnings, zipfile
from pathlib import Path
import nbformat, pandas as pd, pytest
from paddy_lib.core import PaddyError, KaggleCredentialsError, KaggleUnreachableError, iskaggle, kaggle_api, find_kaggle_credentials
from paddy_lib.data import COMP, kaggle_input
from paddy_lib.kaggle import (KAGGLE_SETUP, KaggleMetadataError, KaggleError, NOT_ON_KAGGLE, check_kernel_meta, course_notebooks,
    _first_code_cell as first_code_cell, kaggle_notebooks, kaggle_slug, kernel_title, notebook_kernel_meta, push_lib_dataset,
    push_notebooks, submit, with_setup_cell)
from paddy_lib.testing import LocalKaggle, loopback_only

ROOT = Path(__file__).resolve().parents[1]
COURSE = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if p.name != 'index.ipynb' and not p.name.startswith('_'))
SKIPPED = ('00_core.ipynb', '07_kaggle.ipynb', '08_cli.ipynb', '09_testing.ipynb')  # reference notebooks, checkout, terminal
ON_KAGGLE = [p for p in COURSE if p.name not in SKIPPED]  # what a push sends by default
USER = 'paddy-student'
sha = lambda b: hashlib.sha256(b).hexdigest()
try: import tomllib
except ImportError: import tomli as tomllib  # Python 3.10
DEPS = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']['dependencies']
srcs = lambda cells: [''.join(c['source']) for c in cells]

def test_course_notebooks_is_the_glob():
    assert COURSE, "no course notebooks found in nbs/"
    assert course_notebooks() == COURSE

def test_default_push_leaves_out_the_notebooks_that_need_a_checkout():
    assert NOT_ON_KAGGLE == SKIPPED and kaggle_notebooks() == ON_KAGGLE
    assert len(ON_KAGGLE) == len(COURSE) - len(SKIPPED) and (ROOT/'nbs'/'07_kaggle.ipynb') in COURSE

def test_course_root_without_an_editable_install(monkeypatch, tmp_path):
    import paddy_lib
    from paddy_lib.kaggle import _course_root as course_root
    monkeypatch.setattr(paddy_lib, '__file__', str(tmp_path/'site-packages'/'paddy_lib'/'__init__.py'))
    monkeypatch.chdir(ROOT/'nbs')  # where nbdev-test runs a notebook: the checkout around it is found
    assert course_root() == ROOT
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PaddyError, match='No paddy_lib source checkout found'): course_root()

# --- notebooks ---

@pytest.mark.parametrize('nb', COURSE, ids=[p.name for p in COURSE])
def test_push_course_notebook(nb, local_kaggle, tmp_path):
    lk = local_kaggle
    lk.datasets[f'{USER}/paddy-lib'] = []
    res = push_notebooks(notebooks=[nb], dest=tmp_path/'push')  # user from the credentials the stand-in set
    assert lk.calls() == ['KernelsApiService/SaveKernel']
    req = next(r for r in lk.requests if r.rpc)
    assert req.host == 'localhost' and req.headers['Authorization'] == 'Basic ' + base64.b64encode(f'{USER}:{lk.key}'.encode()).decode()
    title = kernel_title(nb)
    slug = kaggle_slug(title)
    assert 5 <= len(title) <= 50 and slug.startswith('paddy-lib-')
    j = req.json()
    assert (j['slug'], j['newTitle'], j['language'], j['kernelType']) == (f'{USER}/{slug}', title, 'python', 'notebook')
    assert (j.get('isPrivate'), j.get('enableGpu'), j.get('enableInternet')) == (True, True, True)
    assert (j.get('datasetDataSources'), j.get('competitionDataSources'), j.get('kernelDataSources', [])) == \
           ([f'{USER}/paddy-lib'], [COMP], [])
    sent = json.loads(j['text'])
    orig = json.loads(nb.read_text())
    assert srcs(sent['cells']) == srcs(with_setup_cell(orig)['cells'])  # every cell, setup cell first
    assert first_code_cell(sent) == KAGGLE_SETUP
    assert all(c['outputs'] == [] for c in sent['cells'] if c['cell_type'] == 'code')
    assert res == [dict(notebook=nb.name, id=f'{USER}/{slug}', folder=tmp_path/'push'/nb.stem,
                        url=f'http://localhost/code/{USER}/{slug}', version=1)]
    meta = json.loads((tmp_path/'push'/nb.stem/'kernel-metadata.json').read_text())
    assert check_kernel_meta(meta) == [] and meta['id'] == f'{USER}/{slug}' and meta['code_file'] == nb.name

def test_push_whole_course_twice_lands_on_the_same_kernels(local_kaggle, tmp_path):
    lk = local_kaggle
    lk.datasets[f'{USER}/paddy-lib'] = []
    first = push_notebooks(dest=tmp_path/'push')
    second = push_notebooks(dest=tmp_path/'push')
    assert lk.calls() == ['KernelsApiService/SaveKernel'] * (2*len(ON_KAGGLE))
    assert [r['notebook'] for r in first] == [p.name for p in ON_KAGGLE]
    assert len({r['id'] for r in first}) == len(ON_KAGGLE)
    assert sorted(lk.kernels) == sorted(r['id'] for r in first)  # Kaggle's address is the id we sent
    assert [r['version'] for r in second] == [2] * len(ON_KAGGLE)

def test_options_reach_kaggle(local_kaggle, tmp_path):
    lk = local_kaggle
    push_notebooks(notebooks=COURSE[:1], competition=None, gpu=False, accelerator='NvidiaTeslaT4', internet=False,
                   private=False, lib_dataset='someone/their-wheels', titles={COURSE[0].name: 'My own title'},
                   dest=tmp_path/'push')
    j = next(r for r in lk.requests if r.rpc).json()
    assert (j['slug'], j['newTitle'], j.get('machineShape')) == (f'{USER}/my-own-title', 'My own title', 'NvidiaTeslaT4')
    assert (j.get('isPrivate', False), j.get('enableGpu', False), j.get('enableInternet', False)) == (False, False, False)
    assert (j.get('datasetDataSources'), j.get('competitionDataSources', [])) == (['someone/their-wheels'], [])

def test_dry_run_writes_one_valid_folder_per_notebook_without_credentials(kaggle_empty_home, kaggle_no_internet, tmp_path):
    with LocalKaggle() as lk:
        for k in ('KAGGLE_USERNAME', 'KAGGLE_KEY'): os.environ.pop(k)  # no credentials at all: a dry run needs none
        res = push_notebooks('someone', dry_run=True, dest=tmp_path/'dry')
    assert lk.requests == []
    assert sorted(p.name for p in (tmp_path/'dry').iterdir()) == sorted(p.stem for p in ON_KAGGLE)
    for r, nb in zip(res, ON_KAGGLE):
        meta = json.loads((r['folder']/'kernel-metadata.json').read_text())
        assert check_kernel_meta(meta) == []
        assert meta == dict(id=r['id'], title=kernel_title(nb), code_file=nb.name, language='python',
                            kernel_type='notebook', is_private=True, enable_gpu=True, enable_internet=True,
                            dataset_sources=['someone/paddy-lib'], competition_sources=[COMP], kernel_sources=[],
                            machine_shape='NvidiaTeslaT4')
        pushed = nbformat.read(r['folder']/nb.name, as_version=4)
        nbformat.validate(pushed)
        assert first_code_cell(pushed) == KAGGLE_SETUP
        assert r['url'] is None

def test_bad_titles_stop_everything_before_sending(local_kaggle, tmp_path):
    lk = local_kaggle
    with pytest.raises(KaggleMetadataError) as e:
        push_notebooks(dest=tmp_path/'push', titles={ON_KAGGLE[-1].name: 'x'*51, ON_KAGGLE[0].name: 'Tiny'})
    msg = str(e.value)
    assert f"{ON_KAGGLE[-1].name}: the title 'xxx" in msg and 'has 51 characters; Kaggle needs 5 to 50' in msg
    assert f"{ON_KAGGLE[0].name}: the title 'Tiny' has 4 characters" in msg and msg.startswith('Nothing was sent')
    assert lk.requests == [] and not (tmp_path/'push').exists()

@pytest.mark.parametrize('internet', [True, False])
def test_no_wheels_dataset_stops_the_push(internet, local_kaggle, tmp_path):
    "paddy_lib is not on PyPI: without its wheels dataset the pushed notebooks could not install it, internet or not."
    with pytest.raises(KaggleMetadataError, match=r'not on PyPI\): pass `lib_dataset`'):
        push_notebooks(notebooks=COURSE[:1], internet=internet, lib_dataset=None, dest=tmp_path/'push')
    assert local_kaggle.requests == [] and not (tmp_path/'push').exists()

# --- the setup cell, run for real with `pip` recorded instead of run ---

def _run_setup(monkeypatch, wheels, calls=None):
    "Run KAGGLE_SETUP as on Kaggle with paddy_lib not importable and `wheels` under /kaggle/input: the pip commands."
    import glob
    monkeypatch.setenv('KAGGLE_KERNEL_RUN_TYPE', 'Interactive')
    monkeypatch.setitem(sys.modules, 'paddy_lib', None)  # `import paddy_lib` raises ImportError
    monkeypatch.setattr(glob, 'glob', lambda *a, **k: list(wheels))
    calls = [] if calls is None else calls
    monkeypatch.setattr(subprocess, 'run', lambda cmd, **k: calls.append(cmd))
    exec(KAGGLE_SETUP, {})
    return calls

def test_setup_cell_without_wheels_raises_and_installs_nothing(monkeypatch):
    calls = []
    with pytest.raises(ImportError, match=r'no dataset of its wheels is attached.*not on PyPI.*`paddy push --lib`'):
        _run_setup(monkeypatch, [], calls)
    assert calls == []  # never `pip install paddy_lib` from PyPI

def test_setup_cell_installs_only_the_attached_wheels(monkeypatch):
    whl = '/kaggle/input/paddy-lib/paddy_lib-0.1.0-py3-none-any.whl'
    calls = _run_setup(monkeypatch, [whl])
    assert calls == [[sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', whl]]

@pytest.mark.parametrize('lib_dataset', ['paddy-lib', f'{USER}/paddy-lib'])
def test_push_lib_with_a_slug_or_owner_slug(lib_dataset, local_kaggle, tmp_path, capsys):
    "`paddy push --lib --lib-dataset owner/slug`: the upload takes the slug under the owner, the notebook attaches it."
    from paddy_lib.kaggle import paddy_push
    res = paddy_push(str(COURSE[0]), lib=True, lib_dataset=lib_dataset, dest=str(tmp_path/'push'))
    lk = local_kaggle
    assert list(lk.datasets) == [f'{USER}/paddy-lib'] and lk.dataset_files(f'{USER}/paddy-lib')
    save = next(r.json() for r in lk.requests if r.rpc == 'KernelsApiService/SaveKernel')
    assert save['datasetDataSources'] == [f'{USER}/paddy-lib'] and res[0]['id'].startswith(f'{USER}/')

@pytest.mark.parametrize('user', [None, USER])
def test_push_lib_to_someone_elses_dataset_is_refused(user, local_kaggle, tmp_path):
    from paddy_lib.kaggle import paddy_push
    with pytest.raises(KaggleMetadataError, match=f"your own account \\({USER}\\).*pass --lib-dataset paddy-lib"):
        paddy_push(str(COURSE[0]), user=user, lib=True, lib_dataset='someone-else/paddy-lib', dest=str(tmp_path/'push'))
    assert local_kaggle.requests == [] and not (tmp_path/'push').exists()

def test_never_overwrites_a_folder_it_did_not_write(local_kaggle, tmp_path):
    mine = tmp_path/'push'/COURSE[0].stem
    mine.mkdir(parents=True); (mine/'precious.txt').write_text('keep me')
    with pytest.raises(PaddyError, match='was not written by paddy_lib'): push_notebooks(notebooks=COURSE[:1], dest=tmp_path/'push')
    (tmp_path/'lib').mkdir(); (tmp_path/'lib'/'other.whl').write_text('keep me too')
    with pytest.raises(PaddyError, match='was not written by paddy_lib'): push_lib_dataset(dest=tmp_path/'lib')
    assert (mine/'precious.txt').read_text() == 'keep me' and (tmp_path/'lib'/'other.whl').read_text() == 'keep me too'
    assert local_kaggle.requests == []

def test_check_kernel_meta_rules():
    ok = dict(id='u/scaling-up-road-to-the-top-part-3', title='Scaling Up: Road to the Top, Part 3', code_file='a.ipynb',
              language='python', kernel_type='notebook', dataset_sources=['u/paddy-lib'], competition_sources=[COMP])
    assert check_kernel_meta(ok) == []
    assert 'not the one Kaggle derives' in check_kernel_meta({**ok, 'title': 'Road to the Top, Part 3'})[0]
    assert 'lowercase letters' in check_kernel_meta({**ok, 'id': 'u/Road_to_top'})[0]
    assert "must be 'user/slug'" in check_kernel_meta({**ok, 'dataset_sources': ['paddy-lib']})[0]
    assert "competition's slug" in check_kernel_meta({**ok, 'competition_sources': ['competitions/x y']})[0]
    assert 'apostrophe' in check_kernel_meta({**ok, 'title': "The seed's way", 'id': 'u/the-seed-s-way'})[0]
    assert 'needs `code_file`' in check_kernel_meta({k: v for k, v in ok.items() if k != 'code_file'})[0]
    assert all(len(kernel_title(nb)) <= 50 for nb in COURSE)

# --- the library's wheels ---

def _tiny_wheel(folder, name='tinydep', version='0.1'):
    "A minimal valid wheel, so `pip download --no-index --find-links` can fetch it offline."
    folder.mkdir(parents=True, exist_ok=True)
    whl = folder/f'{name}-{version}-py3-none-any.whl'
    di = f'{name}-{version}.dist-info'
    files = {f'{name}/__init__.py': 'x = 1\n', f'{di}/METADATA': f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n',
             f'{di}/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n'}
    files[f'{di}/RECORD'] = ''.join(f'{k},,\n' for k in files) + f'{di}/RECORD,,\n'
    with zipfile.ZipFile(whl, 'w') as z:
        for k, v in files.items(): z.writestr(k, v)
    return whl

def test_push_lib_dataset_creates_then_versions(local_kaggle, tmp_path):
    lk = local_kaggle
    extra = _tiny_wheel(tmp_path/'extra', 'extradep')
    _tiny_wheel(tmp_path/'index', 'tinydep')
    dest = tmp_path/'lib'
    existed = {n for n in ('build', 'paddy_lib.egg-info') if (ROOT/n).exists()}
    first = push_lib_dataset(extra_wheels=(extra, 'tinydep==0.1'), dest=dest,
                             pip_args=('--no-index', '--find-links', str(tmp_path/'index')))
    assert first['action'] == 'created' and first['id'] == f'{USER}/paddy-lib'
    assert lk.calls() == ['DatasetApiService/GetDatasetStatus'] * 2 + ['BlobApiService/StartBlobUpload'] * 3 + \
                         ['DatasetApiService/CreateDataset']  # asked twice: here, and inside the client's dataset_create_new
    local = {f.name: sha(f.read_bytes()) for f in dest.glob('*.whl')}
    assert sorted(local) == sorted(['extradep-0.1-py3-none-any.whl', 'tinydep-0.1-py3-none-any.whl',
                                    next(dest.glob('paddy_lib-*.whl')).name])
    arrived = lk.dataset_files(f'{USER}/paddy-lib')
    assert {k: sha(v) for k, v in arrived.items()} == local  # the bytes Kaggle got are the wheels built here
    puts = [r for r in lk.requests if r.method == 'PUT']
    assert sorted(sha(r.body) for r in puts) == sorted(local.values())
    create = next(r.json() for r in lk.requests if r.rpc == 'DatasetApiService/CreateDataset')
    assert (create['title'], create['licenseName'], create.get('isPrivate'), create['slug']) == \
           ('paddy_lib wheels', 'apache-2.0', True, 'paddy-lib')
    whl = next(dest.glob('paddy_lib-*.whl'))
    import paddy_lib, paddy_lib.kaggle
    assert sorted(first['requires']) == sorted(DEPS)
    with zipfile.ZipFile(whl) as z:  # the wheel holds this checkout's library
        assert z.read('paddy_lib/kaggle.py') == Path(paddy_lib.kaggle.__file__).read_bytes()
        assert f"Version: {paddy_lib.__version__}" in z.read(f'paddy_lib-{paddy_lib.__version__}.dist-info/METADATA').decode()
    assert {n for n in ('build', 'paddy_lib.egg-info') if (ROOT/n).exists()} == existed  # the checkout is untouched
    second = push_lib_dataset(dest=dest, notes='v2')
    assert second['action'] == 'versioned' and second['files'] == [p.name for p in dest.glob('paddy_lib-*.whl')]
    assert lk.calls()[-3:] == ['DatasetApiService/GetDatasetStatus', 'BlobApiService/StartBlobUpload',
                               'DatasetApiService/CreateDatasetVersion']
    v2 = lk.datasets[f'{USER}/paddy-lib'][-1]
    assert v2['notes'] == 'v2' and list(v2['files']) == [p.name for p in dest.glob('*.whl')]

def test_push_lib_dataset_checks_metadata_first(local_kaggle, tmp_path):
    with pytest.raises(KaggleMetadataError, match="license 'MIT' is not one of Kaggle's"):
        push_lib_dataset(license='MIT', dest=tmp_path/'lib')
    with pytest.raises(KaggleMetadataError, match='6 to 50 lowercase'):
        push_lib_dataset(slug='Paddy_Lib', dest=tmp_path/'lib')
    assert local_kaggle.requests == [] and not (tmp_path/'lib').exists()

# --- submissions ---

@pytest.fixture
def submission_csv(kaggle_demo_data, tmp_path):
    csv = tmp_path/'submission.csv'
    pd.read_csv(kaggle_demo_data/'sample_submission.csv').assign(label='blast').to_csv(csv, index=False)
    return csv

def test_submit(local_kaggle, submission_csv, kaggle_demo_data):
    lk = local_kaggle
    res = submit(submission_csv, 'all blast', path=kaggle_demo_data)
    assert res['message'] == f'Successfully submitted to {COMP}' and res['ref'] == 1
    assert lk.calls() == ['CompetitionApiService/StartSubmissionUpload', 'CompetitionApiService/CreateSubmission']
    s = lk.submissions[0]
    assert (s['competition'], s['file_name'], s['description']) == (COMP, 'submission.csv', 'all blast')
    assert s['data'] == submission_csv.read_bytes()

def test_submit_checks_the_csv_before_sending(local_kaggle, submission_csv, kaggle_demo_data, monkeypatch):
    df = pd.read_csv(submission_csv)
    df.iloc[1:].to_csv(submission_csv, index=False)
    with pytest.raises(PaddyError, match='test images without a row'): submit(submission_csv, 'x', path=kaggle_demo_data)
    df.assign(label='rust').to_csv(submission_csv, index=False)
    with pytest.raises(PaddyError, match="labels not in the competition's"): submit(submission_csv, 'x', path=kaggle_demo_data)
    with pytest.raises(PaddyError, match='does not exist'): submit(submission_csv.with_name('nope.csv'), 'x', path=kaggle_demo_data)
    monkeypatch.chdir(submission_csv.parent)  # no competition data here (HOME is empty too): submit needs `path`
    monkeypatch.delenv('PADDY_DATA', raising=False)
    with pytest.raises(PaddyError, match='pass `path`'): submit(submission_csv, 'x')
    assert local_kaggle.requests == []

def test_submit_to_an_unknown_competition(local_kaggle, submission_csv, kaggle_demo_data):
    with pytest.raises(PaddyError, match='not found'): submit(submission_csv, 'x', 'no-such-competition', path=kaggle_demo_data)

# --- errors ---

def _calls(submission_csv, data, tmp_path):
    return dict(push_notebooks=lambda: push_notebooks(USER, COURSE[:1], dest=tmp_path/'push'),
                push_lib_dataset=lambda: push_lib_dataset(USER, dest=tmp_path/'lib'),
                submit=lambda: submit(submission_csv, 'x', path=data))

@pytest.mark.parametrize('fn', ['push_notebooks', 'push_lib_dataset', 'submit'])
def test_no_credentials_is_a_clear_error(fn, kaggle_empty_home, kaggle_no_internet, submission_csv, kaggle_demo_data, tmp_path):
    with pytest.raises(KaggleCredentialsError) as e: _calls(submission_csv, kaggle_demo_data, tmp_path)[fn]()
    assert isinstance(e.value, PaddyError) and isinstance(e.value, ValueError)
    for where in ('KAGGLE_USERNAME and KAGGLE_KEY', 'KAGGLE_API_TOKEN', str(kaggle_empty_home/'.kaggle'/'kaggle.json'),
                  '~/.kaggle/access_token', 'kaggle auth login'):
        assert where in str(e.value), where
    if fn == 'push_notebooks': assert (tmp_path/'push'/COURSE[0].stem/'kernel-metadata.json').exists()  # kept
    if fn == 'push_lib_dataset': assert list((tmp_path/'lib').glob('paddy_lib-*.whl'))

def test_kaggle_api_without_credentials_never_exits(kaggle_empty_home):
    with pytest.raises(KaggleCredentialsError, match='No Kaggle credentials found'): kaggle_api()
    (kaggle_empty_home/'.kaggle').mkdir()
    (kaggle_empty_home/'.kaggle'/'kaggle.json').write_text('{"username": "someone"}')  # no key: the client exit()s
    with pytest.raises(KaggleCredentialsError, match='could not authenticate with them'): kaggle_api()
    import builtins
    monkey = builtins.__dict__.pop('exit', None)  # as in a Jupyter kernel, where IPython removes `exit`
    try:
        with pytest.raises(KaggleCredentialsError, match='could not authenticate with them'): kaggle_api()
    finally:
        if monkey is not None: builtins.exit = monkey
    assert not hasattr(builtins, 'exit') or builtins.exit is monkey

@pytest.mark.parametrize('fn', ['push_notebooks', 'push_lib_dataset', 'submit'])
def test_unreachable_kaggle_keeps_local_files(fn, local_kaggle, submission_csv, kaggle_demo_data, tmp_path):
    before = submission_csv.read_bytes()
    local_kaggle.stop()  # its port now refuses connections
    with pytest.raises(KaggleUnreachableError, match='Could not reach Kaggle') as e:
        _calls(submission_csv, kaggle_demo_data, tmp_path)[fn]()
    assert 'Nothing local was lost' in str(e.value)
    assert submission_csv.read_bytes() == before
    if fn == 'push_notebooks': assert (tmp_path/'push'/COURSE[0].stem/COURSE[0].name).exists() and 'every folder is in' in str(e.value)
    if fn == 'push_lib_dataset': assert list((tmp_path/'lib').glob('paddy_lib-*.whl'))

def test_wrong_key_is_a_credentials_error(local_kaggle, submission_csv, kaggle_demo_data, monkeypatch):
    monkeypatch.setenv('KAGGLE_KEY', 'wrong')
    with pytest.raises(KaggleCredentialsError, match='Kaggle refused to submit'): submit(submission_csv, 'x', path=kaggle_demo_data)

def test_each_call_sees_the_environment_of_its_time(kaggle_empty_home, kaggle_no_internet, tmp_path):
    "`from kaggle import api` fixes server and credentials at import; `kaggle_api` reads them per call."
    with LocalKaggle(user='first-user', datasets=['first-user/paddy-lib']) as a:
        push_notebooks(notebooks=COURSE[:1], dest=tmp_path/'a')
    with LocalKaggle(user='second-user', datasets=['second-user/paddy-lib']) as b:
        push_notebooks(notebooks=COURSE[:1], dest=tmp_path/'b')
    assert [r.user for r in a.requests] == ['first-user'] and [r.user for r in b.requests] == ['second-user']

def test_the_guard_catches_a_request_to_the_real_kaggle(kaggle_empty_home, monkeypatch, tmp_path):
    monkeypatch.setenv('KAGGLE_USERNAME', USER); monkeypatch.setenv('KAGGLE_KEY', 'k')
    for k in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'ALL_PROXY', 'all_proxy'): monkeypatch.delenv(k, raising=False)
    with loopback_only() as attempts:
        with pytest.raises(KaggleUnreachableError): push_notebooks(notebooks=COURSE[:1], dest=tmp_path/'p')
    assert attempts and attempts[0][0] == 'api.kaggle.com'

# --- in fresh processes: the console functions, and the data layer's download ---

GUARD = '''
import os, socket
_log, _local = os.environ['GUARD_LOG'], ('127.0.0.1', '::1', 'localhost')
_gai, _conn = socket.getaddrinfo, socket.socket.connect
def _deny(what):
    with open(_log, 'a') as f: f.write(repr(what) + '\\n')
    raise ConnectionRefusedError(f"guard: {what}")
def getaddrinfo(host, port, *a, **k):
    h = host.decode() if isinstance(host, bytes) else host
    if h is not None and h not in _local: _deny((h, port))
    return _gai(host, port, *a, **k)
def connect(self, addr):
    if isinstance(addr, tuple) and addr[0] not in _local: _deny(addr)
    return _conn(self, addr)
socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
'''

def _run(code, env, cwd, *args):
    "Run `code` as a script in a fresh Python whose sockets refuse anything but the loopback."
    guard = cwd/'guard'; guard.mkdir(exist_ok=True)
    (guard/'sitecustomize.py').write_text(GUARD)
    (cwd/'script.py').write_text(textwrap.dedent(code))
    env = {**env, 'GUARD_LOG': str(cwd/'guard.log'), 'PYTHONPATH': str(guard)}
    p = subprocess.run([sys.executable, 'script.py', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert not (cwd/'guard.log').exists(), (cwd/'guard.log').read_text()
    return p

CLI_SCRIPT = """
import sys
from paddy_lib.kaggle import paddy_push, paddy_submit
from paddy_lib.data import paddy_path
push_args, submit_args = sys.argv[1:sys.argv.index('--')], sys.argv[sys.argv.index('--')+1:]
sys.argv = ['paddy push', *push_args]
paddy_push()
sys.argv = ['paddy submit', *submit_args]
paddy_submit()
print('PADDY_PATH', paddy_path())
"""

def test_commands_and_download_in_a_fresh_process(local_kaggle, submission_csv, kaggle_demo_data, tmp_path):
    "One fresh process (importing paddy_lib takes seconds): `paddy push --dry-run`, `paddy submit`, `paddy_path()`."
    lk, work = local_kaggle, tmp_path/'work'
    work.mkdir()
    p = _run(CLI_SCRIPT, dict(os.environ), work,
             '--dry-run', '--user', 'someone', '--no-gpu', '--dest', str(tmp_path/'dry'), *map(str, COURSE[:2]), '--',
             str(submission_csv), 'from the command line', '--path', str(kaggle_demo_data))
    assert p.returncode == 0, p.stderr[-3000:]
    # paddy push --dry-run: one folder per notebook, valid metadata, nothing sent
    assert sorted(d.name for d in (tmp_path/'dry').iterdir()) == sorted(nb.stem for nb in COURSE[:2])
    for nb in COURSE[:2]:
        meta = json.loads((tmp_path/'dry'/nb.stem/'kernel-metadata.json').read_text())
        assert check_kernel_meta(meta) == [] and meta['enable_gpu'] is False and meta['id'].startswith('someone/')
    assert 'KernelsApiService/SaveKernel' not in lk.calls()
    # paddy submit: the CSV's bytes arrived
    assert f'Successfully submitted to {COMP}' in p.stdout
    assert [(s['data'], s['description']) for s in lk.submissions] == [(submission_csv.read_bytes(), 'from the command line')]
    # paddy_path(): the data layer downloads the competition through the client, from the stand-in
    got = Path(p.stdout.split('PADDY_PATH ')[-1].strip())
    assert got == work/COMP
    assert (got/'train.csv').read_bytes() == (kaggle_demo_data/'train.csv').read_bytes()
    assert len(list(got.rglob('*.jpg'))) == len(list(kaggle_demo_data.rglob('*.jpg')))
    assert 'CompetitionApiService/DownloadDataFiles' in lk.calls()


@pytest.mark.parametrize('nb', course_notebooks(), ids=lambda p: p.name)
def test_every_course_notebook_starts_with_the_setup_cell(nb):
    "The repo's notebooks themselves (not only the pushed copies) carry the Kaggle setup cell, character for character."
    assert first_code_cell(json.loads(nb.read_text())) == KAGGLE_SETUP, f'{nb.name}: first code cell is not KAGGLE_SETUP'


# --- moved from 07_kaggle: where we are, the setup cell, the bare client ---

def test_iskaggle_and_the_mounted_competition():
    assert iskaggle == bool(os.environ.get('KAGGLE_KERNEL_RUN_TYPE'))
    assert kaggle_input() == Path('/kaggle/input/paddy-disease-classification')

BARE = dict(cells=[dict(cell_type='markdown', metadata={}, source='# A title'),
                   dict(cell_type='code', metadata={}, outputs=[], execution_count=None, source='x = 1')],
            metadata={}, nbformat=4, nbformat_minor=5)

def test_with_setup_cell_inserts_once_after_the_title():
    bare = json.loads(json.dumps(BARE))
    fixed = with_setup_cell(bare)
    assert srcs(fixed['cells']) == ['# A title', KAGGLE_SETUP, 'x = 1']
    assert with_setup_cell(fixed) == fixed  # a notebook that has it is left alone
    assert bare == BARE  # the original is untouched

def test_setup_cell_does_nothing_off_kaggle_or_when_paddy_lib_imports(monkeypatch):
    import glob
    calls = []
    monkeypatch.setattr(glob, 'glob', lambda *a, **k: ['/kaggle/input/paddy-lib/paddy_lib-0.1.0-py3-none-any.whl'])
    monkeypatch.setattr(subprocess, 'run', lambda cmd, **k: calls.append(cmd))
    monkeypatch.delenv('KAGGLE_KERNEL_RUN_TYPE', raising=False)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, 'paddy_lib', None)  # not importable, but off Kaggle: nothing happens
        exec(KAGGLE_SETUP, {})
    monkeypatch.setenv('KAGGLE_KERNEL_RUN_TYPE', 'Interactive')  # on Kaggle, paddy_lib importable: nothing either
    exec(KAGGLE_SETUP, {})
    assert calls == []

def test_the_bare_client_stops_the_interpreter_without_credentials(kaggle_empty_home, monkeypatch):
    "Why `kaggle_api` exists: the client's `authenticate()` calls the builtin `exit(1)` (a NameError where IPython took it)."
    check = 'from kaggle.api.kaggle_api_extended import KaggleApi\nKaggleApi().authenticate()\nprint("authenticated")'
    p = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert p.returncode == 1 and 'authenticated' not in p.stdout
    from kaggle.api.kaggle_api_extended import KaggleApi
    with pytest.raises(SystemExit): KaggleApi().authenticate()
    import builtins
    monkeypatch.delattr(builtins, 'exit', raising=False)  # as in a Jupyter kernel
    with pytest.raises(NameError): KaggleApi().authenticate()

def test_the_kaggle_singleton_keeps_the_environment_of_its_import(kaggle_empty_home, kaggle_no_internet):
    import importlib, kaggle
    importlib.reload(sys.modules['kaggle.api.kaggle_api_extended']); importlib.reload(kaggle)  # as if first imported now: no credentials, the real server
    with LocalKaggle():
        fresh = kaggle_api()
        assert (fresh.args, fresh.config_values['username']) == (['--local'], USER)
        assert (kaggle.api.args, kaggle.api.config_values.get('username')) == ([], None)

def test_a_kaggle_json_without_key_is_found_then_refused(kaggle_empty_home):
    cfg = kaggle_empty_home/'.kaggle'
    cfg.mkdir()
    (cfg/'kaggle.json').write_text('{"username": "paddy-student"}')
    assert find_kaggle_credentials() == str(cfg/'kaggle.json')
    with pytest.raises(KaggleCredentialsError, match='could not authenticate with them'): kaggle_api()

# --- moved from 07_kaggle: slugs, titles, metadata ---

def test_slugs_and_title_rules():
    assert kaggle_slug('Scaling Up: Road to the Top, Part 3') == 'scaling-up-road-to-the-top-part-3'
    assert kaggle_slug("seed's") == 'seed-s'  # python-slugify; a site that drops apostrophes makes 'seeds'
    ok = dict(id='jhoward/scaling-up-road-to-the-top-part-3', title='Scaling Up: Road to the Top, Part 3',
              code_file='x.ipynb', language='python', kernel_type='notebook')
    assert len(check_kernel_meta({**ok, 'title': ok['title'] + ' (v2)'})) == 1
    assert 'Kaggle needs 5 to 50' in check_kernel_meta({**ok, 'title': 'Gpu', 'id': 'jhoward/gpu'})[0]
    assert 'is not a Kaggle username' in check_kernel_meta({**ok, 'id': '-x/scaling-up-road-to-the-top-part-3'})[0]

def test_kernel_titles_and_metadata():
    nb = ROOT/'nbs'/'07_kaggle.ipynb'
    assert kernel_title(nb) == 'paddy_lib 07: Pushing to Kaggle'
    assert kernel_title(nb, max_len=24) == 'paddy_lib 07: Pushing to'
    meta = notebook_kernel_meta(nb, USER)
    assert meta['id'] == f'{USER}/paddy-lib-07-pushing-to-kaggle' and check_kernel_meta(meta) == []
    assert meta['machine_shape'] == 'NvidiaTeslaT4' and 'machine_shape' not in notebook_kernel_meta(nb, USER, gpu=False)
    assert notebook_kernel_meta(nb, USER, lib_dataset='other/wheels')['dataset_sources'] == ['other/wheels']

def test_fastkaggle_pushes_id_and_title_unchecked():
    "07's comparison, in fastkaggle's source: `push_notebook` never compares slug and title; `mk_dataset` uses the title."
    import inspect
    fk = pytest.importorskip('fastkaggle.core')  # a dev dependency
    src_push, src_mk = inspect.getsource(fk.push_notebook), inspect.getsource(fk.mk_dataset)
    assert 'slug' not in src_push and ' if ' not in src_push and ' == ' not in src_push
    assert "md['id'].replace('INSERT_SLUG_HERE',title)" in src_mk
    assert 'api.authenticate()' in inspect.getsource(fk.import_kaggle)

def test_the_library_does_not_import_fastkaggle():
    import paddy_lib
    assert not any(d.startswith('fastkaggle') for d in DEPS)
    assert [f.name for f in Path(paddy_lib.__file__).parent.glob('*.py')
            if re.search(r'^\s*(from|import) fastkaggle', f.read_text(), re.M)] == []

# --- moved from 07_kaggle: pushes that half work ---

def test_an_unknown_wheels_dataset_still_pushes_but_warns(local_kaggle, tmp_path):
    with pytest.warns(UserWarning, match=f'did not find {USER}/paddy-lib'):
        res = push_notebooks(notebooks=COURSE[:1], dest=tmp_path/'push')
    assert res[0]['version'] == 1 and list(local_kaggle.kernels) == [res[0]['id']]

def test_a_push_that_fails_halfway_names_what_went(kaggle_empty_home, kaggle_no_internet, tmp_path):
    with LocalKaggle(max_requests=1, datasets=[f'{USER}/paddy-lib']) as lk:  # answers one request, then 503
        with pytest.raises(KaggleError) as e: push_notebooks(notebooks=ON_KAGGLE[:3], dest=tmp_path/'half')
    assert len(lk.kernels) == 1
    assert f"pushed before this: {ON_KAGGLE[0].name};" in str(e.value) and f"could not push {ON_KAGGLE[1].name}" in str(e.value)
    assert sorted(p.name for p in (tmp_path/'half').iterdir()) == sorted(p.stem for p in ON_KAGGLE[:3])
