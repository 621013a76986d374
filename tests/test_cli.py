"The `paddy` command as a user runs it: a separate process, killed and run again, exit codes and messages."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

from paddy_lib.cli import main, COMMANDS
from paddy_lib.data import make_demo_paddy, LABELS

PADDY = [sys.executable, '-m', 'paddy_lib.cli']
CONSOLE = [shutil.which('paddy')] if shutil.which('paddy') else PADDY  # the installed console script, as a user runs it


def paddy(*args, env=None, **kw):
    "Run `paddy *args` through the installed console script (else `python -m paddy_lib.cli`)."
    return subprocess.run([*CONSOLE, *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def test_help_lists_every_command():
    r = paddy('--help')
    assert r.returncode == 0, r.stderr
    for c in COMMANDS: assert f'\n  {c} ' in r.stdout
    assert paddy().returncode == 2          # no command: the usage, and the usage-error status


def test_python_m_is_the_same_command():
    "`python -m paddy_lib.cli` (no installed script needed): the module hands over to its imported self."
    r = subprocess.run([*PADDY, 'check', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith('usage: paddy check'), r.stdout + r.stderr


@pytest.mark.parametrize('cmd', list(COMMANDS))
def test_each_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e: main([cmd, '--help'])   # argparse's own exit, status 0
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f'usage: paddy {cmd}')


def test_console_script_installed():
    exe = shutil.which('paddy')
    if exe is None: pytest.skip('the package is not installed (pip install -e .), so there is no `paddy` script')
    r = subprocess.run([exe, '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and '  demo ' in r.stdout, r.stdout + r.stderr


def test_unknown_command_and_bad_input(tmp_path, capsys):
    assert main(['demoo']) == 2
    assert "did you mean 'demo'" in capsys.readouterr().err
    (tmp_path/'members.json').write_text('[{"arch": "resnet18", "item": ["squish", 96], "size": 64, "wieght": 2}]')
    assert main(['ensemble', '--path', str(tmp_path), '--configs', str(tmp_path/'members.json')]) == 1
    err = capsys.readouterr().err
    assert 'Unknown member field(s) wieght' in err and 'Traceback' not in err
    assert main(['check', '--path', str(tmp_path)]) == 1
    assert 'is missing train.csv' in capsys.readouterr().err
    (tmp_path/'typo.json').write_text('[{"arch": "resnet18", "item": ["squash", 96], "size": 32}]')
    assert main(['ensemble', '--path', str(tmp_path), '--configs', str(tmp_path/'typo.json'), '--no-check']) == 1
    assert 'method one of squish, crop, pad' in capsys.readouterr().err
    assert main(['submit', str(tmp_path/'nope.csv'), 'my message', '--path', str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith('paddy submit: ') and 'nope.csv' in err and 'Traceback' not in err


def test_bad_option_is_status_2():
    "argparse's own message and status, through the console script."
    r = paddy('demo', '--epochs', 'x')
    assert r.returncode == 2 and "argument --epochs: invalid int value: 'x'" in r.stderr, r.stderr


def test_interrupt_is_status_130(monkeypatch, capsys):
    "Ctrl-C during a command: status 130 and a line saying finished work is kept; no traceback."
    import paddy_lib.cli
    def interrupted(path:str=None, images:bool=True): raise KeyboardInterrupt
    monkeypatch.setattr(paddy_lib.cli, 'paddy_check', interrupted)
    assert main(['check']) == 130
    err = capsys.readouterr().err
    assert 'paddy check: interrupted. Finished work is saved: run the same command again to carry on.' in err
    assert 'Traceback' not in err


def test_missing_command_function_says_how_to_reinstall(monkeypatch, capsys):
    "A command this installation lacks: status 1, and the README's install, never `pip install -U` (not on PyPI)."
    import paddy_lib.cli
    monkeypatch.setitem(paddy_lib.cli.COMMANDS, 'check', ('paddy_lib.cli', 'no_such_function'))
    assert main(['check']) == 1
    err = capsys.readouterr().err
    assert err.startswith('paddy check needs paddy_lib.cli.no_such_function, which this installation of paddy_lib lacks')
    assert 'from its clone (`pip install -e .`)' in err and '`pip install dist/paddy_lib-*.whl`' in err
    assert 'not on PyPI' in err and 'pip install -U' not in err
    readme = (Path(__file__).resolve().parents[1]/'README.md').read_text()
    assert 'pip install -e .' in readme and 'pip install dist/paddy_lib-*.whl' in readme   # the same two ways


def test_demo_killed_after_first_member_resumes_and_writes_submission(tmp_path):
    "The main job: `paddy demo`, killed (SIGKILL) once its first member is saved, then run again to the end."
    env = {'PADDY_DEMO': str(tmp_path/'demo'), 'PADDY_SCALE': 'demo'}
    out = tmp_path/'out'
    args = [*CONSOLE, 'demo', '--out', str(out), '--epochs', '1']  # progress by default: its output is a pipe, not a terminal
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
    try:
        deadline = time.time() + 300
        while not list((out/'members').glob('*.pt')) and p.poll() is None and time.time() < deadline: time.sleep(0.2)
        assert p.poll() is None, f'paddy demo ended before it could be killed:\n{p.stdout.read()}'
        p.kill()                     # no cleanup, no handler: what a crash or a killed Kaggle session does
    finally:
        p.wait()
    first = {f.name: f.stat().st_mtime_ns for f in (out/'members').glob('*.pt')}
    assert len(first) == 1, first
    assert not (out/'submission.csv').exists()

    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count('already done') == 1, r.stdout
    assert '\r' not in r.stdout and len(r.stdout) < 20_000          # no progress bars in a log: one line per epoch
    assert r.stdout.count('  recipe: fit_one_cycle on the whole model (random weights') == 3
    epoch_lines = [l for l in r.stdout.splitlines() if l.split()[:1] == ['0'] and len(l.split()) == 5]
    assert len(epoch_lines) == 3, r.stdout                           # epoch 0 of each member trained: loss, loss, error, time
    for name, mtime in first.items(): assert (out/'members'/name).stat().st_mtime_ns == mtime   # not trained again
    assert len(list((out/'members').glob('*.pt'))) == 4
    assert 'ensemble: weighted average' in r.stdout

    sub = pd.read_csv(out/'submission.csv')
    ss = pd.read_csv(tmp_path/'demo'/'sample_submission.csv')
    assert list(sub.columns) == ['image_id', 'label']
    assert list(sub.image_id) == list(ss.image_id)         # one row per test image, in sample_submission's order
    assert set(sub.label) <= set(LABELS)
    records = pd.read_csv(out/'records.csv')
    assert records.status.tolist() == ['loaded', 'trained', 'trained', 'trained']
    assert (records.accum == 2).all()
    from paddy_lib.core import device_name
    from paddy_lib.ensemble import load_member
    assert {load_member(f)['record']['device'] for f in (out/'members').glob('*.pt')} == {device_name()}  # this machine's device


# --- paddy push on a machine without Kaggle credentials ---

def _course():
    "The notebooks `paddy push` sends by default: the course less `NOT_ON_KAGGLE` (reference notebooks, and those needing a checkout)."
    from paddy_lib.kaggle import NOT_ON_KAGGLE
    root = Path(__file__).resolve().parents[1]
    return sorted(p for p in (root/'nbs').glob('*.ipynb') if p.name not in ('index.ipynb', *NOT_ON_KAGGLE)
                  and not p.name.startswith('_'))


def test_push_dry_run_needs_no_credentials(kaggle_empty_home, kaggle_no_internet, tmp_path, capsys):
    "A dry run sends nothing: without credentials or --user it writes every folder under a placeholder owner, and says so."
    from paddy_lib.kaggle import PLACEHOLDER_USER, check_kernel_meta
    assert main(['push', '--dry-run', '--dest', str(tmp_path/'dry')]) == 0
    out = capsys.readouterr().out
    assert f"placeholder '{PLACEHOLDER_USER}'" in out and '--user' in out
    course = _course()
    assert sorted(d.name for d in (tmp_path/'dry').iterdir()) == sorted(nb.stem for nb in course)
    for nb in course:
        meta = json.loads((tmp_path/'dry'/nb.stem/'kernel-metadata.json').read_text())
        assert meta['id'].startswith(f'{PLACEHOLDER_USER}/') and meta['code_file'] == nb.name
        assert check_kernel_meta(meta) == []
        assert (tmp_path/'dry'/nb.stem/nb.name).is_file()


def test_real_push_without_credentials_is_a_clear_error(kaggle_empty_home, kaggle_no_internet, tmp_path, capsys):
    assert main(['push', '--dest', str(tmp_path/'push')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('paddy push: No Kaggle credentials found') and 'Traceback' not in err
    assert 'KAGGLE_USERNAME and KAGGLE_KEY' in err and str(kaggle_empty_home/'.kaggle'/'kaggle.json') in err


def test_real_push_without_a_username_names_the_option(kaggle_empty_home, kaggle_no_internet, tmp_path, capsys, monkeypatch):
    "Credentials that name no user (an API token): a real push says to pass --user, and sends nothing."
    import types, paddy_lib.kaggle as pk
    monkeypatch.setattr(pk, 'kaggle_api', lambda: types.SimpleNamespace(config_values={}))  # a token's client: no username
    assert main(['push', '--dest', str(tmp_path/'push')]) == 1
    err = capsys.readouterr().err
    assert 'No Kaggle username' in err and '--user NAME' in err and 'Traceback' not in err
    assert not (tmp_path/'push').exists()


def test_commands_say_which_dataset_they_use(tmp_path):
    "Without --path, on a machine without CUDA, real data present: the demo data is picked, and the first line says so."
    demo = make_demo_paddy(tmp_path/'demo')  # the default settings: what `paddy_data()` makes at $PADDY_DEMO
    real = Path(shutil.copytree(demo, tmp_path/'real', ignore=shutil.ignore_patterns('.paddy_demo.json')))
    env = {'PADDY_DEMO': str(demo), 'PADDY_DATA': str(real), 'CUDA_VISIBLE_DEVICES': '', 'PADDY_SCALE': ''}
    r = paddy('check', '--no-images', env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"dataset: {demo} (demo, picked for this machine by paddy_scale() (the full data needs CUDA); --path picks another)"
    r = paddy('check', '--no-images', '--path', real, env=env)
    assert r.returncode == 0 and r.stdout.splitlines()[0] == f"dataset: {real} (full, from --path)", r.stdout + r.stderr


# --- flags that mean what their help says, through the installed console script ---

def console(*args, env=None, **kw):
    return subprocess.run([*CONSOLE, *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def test_bool_options_read_both_ways_and_say_their_default():
    r = console('ensemble', '--help')
    assert r.returncode == 0, r.stderr
    help_ = ' '.join(r.stdout.split())  # argparse wraps lines
    for flag in ('pretrained', 'finetune', 'check', 'retrain', 'progress'): assert f'--{flag}, --no-{flag}' in help_
    assert 'pretrained weights (default: follow the data: none on the demo data, pretrained on any other)' in help_
    assert 'before training (default: yes)' in help_ and 'already saved in `out` (default: no)' in help_
    assert '(default: False)' not in help_ and '(default: True)' not in help_


def _real_copy(tmp_path):
    "The demo data without its stamp: to paddy_lib, a real dataset (so pretrained weights by default)."
    return Path(shutil.copytree(make_demo_paddy(), tmp_path/'real', ignore=shutil.ignore_patterns('.paddy_demo.json')))


OFFLINE = {'HF_ENDPOINT': 'http://127.0.0.1:9', 'HF_HUB_DISABLE_TELEMETRY': '1'}  # the hub unreachable, whatever the network


def test_real_data_offline_asks_for_no_pretrained_before_training(tmp_path):
    "Real data, no internet, empty cache: pretrained by default, said, then one clear line and status 1; nothing trained."
    real = _real_copy(tmp_path)
    (tmp_path/'m.json').write_text(json.dumps([dict(arch='resnet18', item=['squish', 96], size=32, accum=2)]))
    env = {**OFFLINE, 'HF_HOME': str(tmp_path/'hf')}
    t0 = time.time()
    r = console('ensemble', '--path', real, '--configs', tmp_path/'m.json', '--out', tmp_path/'runs', '--no-check', env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'pretrained=True (default_pretrained: not the demo data)' in r.stdout
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("paddy ensemble: resnet18's pretrained weights") and '--no-pretrained' in err[0]
    assert 'Traceback' not in r.stderr and not (tmp_path/'runs'/'members').exists()
    assert time.time() - t0 < 60  # not the hub client's minute of retries (a bound on waiting, not a benchmark)
    r = console('ensemble', '--path', real, '--configs', tmp_path/'m.json', '--out', tmp_path/'runs', '--no-check',
                '--pretrained', '--finetune', '--epochs', '1', env=env)  # said explicitly: the same stop, still before training
    assert r.returncode == 1 and '--no-pretrained' in r.stderr and 'pretrained=True (as given)' in r.stdout


def test_push_dry_run_writes_the_machine_shape(kaggle_empty_home, tmp_path):
    "paddy push --dry-run: Kaggle's T4 by default (through the console script), another shape when named, none on the CPU."
    nb = _course()[0]
    shape = lambda dest: json.loads((dest/nb.stem/'kernel-metadata.json').read_text()).get('machine_shape')
    r = console('push', '--dry-run', '--user', 'someone', '--dest', tmp_path/'dry', nb)
    assert r.returncode == 0, r.stdout + r.stderr
    assert shape(tmp_path/'dry') == 'NvidiaTeslaT4'
    for extra, want in ((['--accelerator', 'NvidiaL4'], 'NvidiaL4'), (['--no-gpu'], None)):  # the same parser, in-process
        assert main(['push', '--dry-run', '--user', 'someone', '--dest', str(tmp_path/'other'), *extra, str(nb)]) == 0
        assert shape(tmp_path/'other') == want


def test_ensemble_takes_a_time_limit(capsys):
    with pytest.raises(SystemExit): main(['ensemble', '--help'])
    out = capsys.readouterr().out
    assert '--time-limit (float)' in out and "can't finish by then" in out


def test_devices_reach_run_ensemble_and_a_bad_one_is_one_line(tmp_path, monkeypatch, capsys):
    "`--devices` is on both commands; an unknown device stops `paddy demo` with the library's message, before training."
    for cmd in ('demo', 'ensemble'):
        with pytest.raises(SystemExit): main([cmd, '--help'])
        assert '--devices (str)' in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    r = subprocess.run([sys.executable, '-m', 'paddy_lib.cli', 'demo', '--devices', 'cpu,gpu0', '--data', str(tmp_path/'d')],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "paddy demo: devices: 'gpu0' is not 'cpu' or 'cuda:N'" in r.stdout + r.stderr
    assert 'Traceback' not in r.stderr and not (tmp_path/'paddy_demo'/'members').exists()
