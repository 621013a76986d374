"Faults a user meets with `run_ensemble` and `paddy ensemble`: caught before the hours, no finished work lost, no stale result reused."
import errno, json, os, shutil, subprocess, sys, time
from pathlib import Path

import pytest, torch
from PIL import Image

import paddy_lib.ensemble as ens
from paddy_lib.cli import main
from paddy_lib.core import PaddyError
from paddy_lib.data import make_demo_paddy
from paddy_lib.ensemble import Member, run_ensemble, image_fingerprint, data_fingerprint, member_file

FAST = dict(epochs=1, eff_bs=16, progress=False, num_workers=0, pretrained=False)
A = Member('test_resnet', ('squish', 96), 32, accum=2)
B = Member('test_resnet', ('crop', (128, 96)), 32, accum=2, weight=2)
CONSOLE = [shutil.which('paddy')] if shutil.which('paddy') else [sys.executable, '-m', 'paddy_lib.cli']


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py: one PyTorch thread


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_demo_paddy(tmp_path_factory.mktemp('faults')/'paddy', n_train=80, n_test=8)


def console(*args, **kw):
    return subprocess.run([*CONSOLE, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'}, **kw)


# --- stale results ---

def test_changed_images_retrain_and_say_why(data, tmp_path):
    "Same CSVs, other images: trained again, with the reason logged; a plain copy (new mtimes) reuses the saved result."
    copy = Path(shutil.copytree(data, tmp_path/'copy'))
    assert image_fingerprint(copy) == image_fingerprint(data) and data_fingerprint(copy) == data_fingerprint(data)
    out = tmp_path/'runs'
    run_ensemble([A], copy, out, log=lambda l: None, **FAST)
    logs = []
    assert run_ensemble([A], copy, out, log=logs.append, **FAST).status == ['loaded']
    f = next((copy/'train_images'/'blast').iterdir())
    Image.open(f).resize((48, 64)).save(f)                 # a resized photo, as a re-extracted archive might hold
    assert image_fingerprint(copy) != image_fingerprint(data)
    logs = []
    run = run_ensemble([A], copy, out, log=logs.append, **FAST)
    assert run.status == ['trained']
    assert any('saved before from other data' in l and 'the images or CSVs have changed' in l for l in logs), logs
    assert len(list((out/'members').glob('*.pt'))) == 2    # the old result stays, under its own key


# --- the output folder ---

def test_unwritable_out_stops_before_training(data, tmp_path):
    "An --out that can't be written (a file in the way here; read-only /kaggle/input on Kaggle) is said before any training."
    (tmp_path/'file').write_text('x')
    r = console('ensemble', '--path', data, '--configs', _members(tmp_path, [A]), '--out', tmp_path/'file'/'runs',
                '--no-check', '--epochs', 1)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Can't write to" in r.stderr and 'running again resumes' in r.stderr and 'Traceback' not in r.stderr
    assert 'recipe:' not in r.stdout                        # nothing trained


def test_read_only_out_with_every_member_saved_still_makes_the_submission(data, tmp_path, monkeypatch):
    "All members saved in a folder that is now read-only: loaded, and the ensemble written elsewhere (records.csv can't be)."
    out = tmp_path/'kept'
    run_ensemble([A, B], data, out, log=lambda l: None, **FAST)
    real = ens.atomic_write
    def read_only(dest, write):
        if Path(dest).resolve().is_relative_to(out.resolve()): raise OSError(errno.EROFS, 'Read-only file system', str(dest))
        return real(dest, write)
    monkeypatch.setattr(ens, 'atomic_write', read_only)
    run = run_ensemble([A, B], data, out, log=lambda l: None, **FAST)
    assert run.status == ['loaded', 'loaded']
    monkeypatch.setattr(ens, 'atomic_write', real)
    assert len(run.write_submission(tmp_path/'submission.csv')) == 8


def test_failed_save_is_written_beside_and_said(data, tmp_path, monkeypatch):
    "Disk full when a member is saved: the result goes to the temp folder, the log says where and that a rerun resumes."
    real = ens.save_member
    def full(res, fn):
        if 'paddy_lib_unsaved' not in str(fn): raise OSError(errno.ENOSPC, 'No space left on device', str(fn))
        return real(res, fn)
    monkeypatch.setattr(ens, 'save_member', full)
    logs = []
    run = run_ensemble([A], data, tmp_path/'full', log=logs.append, **FAST)
    assert run.status == ['trained'] and run.left_out == []   # in this run's submission all the same
    line = next(l for l in logs if 'could not save' in l)
    assert 'No space left on device' in line and 'copy it into' in line and 'running again resumes' in line
    alt = Path(line.split('saved it to ')[1].split(' instead')[0])
    assert ens.load_member(alt)['record']['key'] == run.results[0]['record']['key']
    assert 'not saved' in run.reasons[1]


def test_no_room_for_a_member_is_said_before_training(data, tmp_path, monkeypatch):
    import collections
    monkeypatch.setattr(ens.shutil, 'disk_usage', lambda p: collections.namedtuple('du', 'total used free')(1, 1, 1024))
    with pytest.raises(PaddyError, match=r'MiB free.*running again resumes'):
        run_ensemble([A], data, tmp_path/'nospace', log=lambda l: None, **FAST)
    assert not list((tmp_path/'nospace').glob('members/*.pt'))


def test_a_second_run_on_the_same_out_stops(data, tmp_path):
    "A live run's lock stops a second one with a clear line; a dead run's lock is taken over."
    import socket
    out = tmp_path/'locked'; out.mkdir()
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (out/'.lock').write_text(f'{socket.gethostname()} {sleeper.pid}')
        with pytest.raises(PaddyError, match=rf'Another run \(process {sleeper.pid} .*pass another --out'):
            run_ensemble([A], data, out, log=lambda l: None, **FAST)
    finally:
        sleeper.kill(); sleeper.wait()
    assert run_ensemble([A], data, out, log=lambda l: None, **FAST).status == ['trained']  # its process is gone: stale
    assert not (out/'.lock').exists()                          # released at the end


# --- arguments checked before the first epoch ---

def _members(tmp_path, ms, extra=None):
    fn = tmp_path/'members.json'
    fn.write_text(json.dumps([{**m.spec(), 'weight': m.weight, **(extra or {})} for m in ms]))
    return fn


def test_bad_numbers_stop_before_training(data, tmp_path, capsys):
    "epochs under 1 or a budget that isn't positive: one line, status 1, before anything trains (console script, then in-process)."
    r = console('ensemble', '--path', data, '--configs', _members(tmp_path, [A]), '--out', tmp_path/'runs', '--no-check',
                '--epochs', 0)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "paddy ensemble: epochs=0: each member trains for a whole number of epochs, at least 1 (Road to the Top's 12)."], r.stderr
    assert 'recipe:' not in r.stdout
    for args, says in ((['--epochs', '-3'], 'at least 1'), (['--budget-mib', '-5'], 'a memory budget is a positive number of MiB')):
        code = main(['ensemble', '--path', str(data), '--configs', str(tmp_path/'members.json'), '--out', str(tmp_path/'runs'),
                     '--no-check', *args])
        out, err = capsys.readouterr()
        assert code == 1 and len(err.strip().splitlines()) == 1 and says in err and 'recipe:' not in out


def test_demo_negative_budget_is_one_line(tmp_path):
    r = console('demo', '--out', tmp_path/'d', '--budget-mib', '-5', '--data', tmp_path/'demo')
    assert r.returncode == 1 and r.stderr.count('positive number of MiB') == 1 and 'already holds' not in r.stderr + r.stdout


def test_unknown_timm_kwargs_stop_before_training(data, tmp_path):
    "A typo in a member's timm arguments fails at once (its model made on the meta device), not when that member starts."
    vit = Member('vit_tiny_patch16_224', ('squish', 96), 64, kwargs=dict(img_sz=64))
    r = console('ensemble', '--path', data, '--configs', _members(tmp_path, [A, vit]), '--out', tmp_path/'runs', '--no-check',
                '--epochs', 1)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "does not accept kwargs={'img_sz': 64}" in r.stderr and 'img_sz' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'runs'/'members').exists() or not list((tmp_path/'runs'/'members').glob('*.pt'))
    assert run_ensemble([Member('vit_tiny_patch16_224', ('squish', 96), 64, accum=2, kwargs=dict(img_size=64))], data,
                        tmp_path/'ok', log=lambda l: None, **{**FAST, 'epochs': 1}).status == ['trained']


# --- partial results say so ---

def test_partial_ensemble_lists_who_is_missing_and_exits_3(data, tmp_path, monkeypatch, capsys):
    "One of two members can't fit: the submission is written from the other, the summary says who and why, status 3."
    real = ens._train_member
    monkeypatch.setattr(ens, '_train_member', lambda m, *a, **k: None if m.item[0] == 'crop' else real(m, *a, **k))
    code = main(['ensemble', '--path', str(data), '--configs', str(_members(tmp_path, [A, B])), '--out', str(tmp_path/'runs'),
                 '--no-check', '--epochs', '1', '--submission', str(tmp_path/'sub.csv'), '--no-progress'])
    out, err = capsys.readouterr()
    assert code == 3, out + err
    assert 'left out: member 2 (test_resnet crop 128x96 @32): out of memory even at the largest accum' in out
    assert 'written from 1 of 2 members' in err and (tmp_path/'sub.csv').exists()


def test_broken_image_with_the_check_skipped_is_one_line(data, tmp_path):
    "--no-check and a truncated photo: not a PIL traceback mid-training but one line naming `paddy check`; saved work kept."
    bad = Path(shutil.copytree(data, tmp_path/'bad'))
    for f in (bad/'train_images').rglob('*.jpg'): f.write_bytes(f.read_bytes()[:300])  # every photo cut short
    r = console('ensemble', '--path', bad, '--configs', _members(tmp_path, [A]), '--out', tmp_path/'runs', '--no-check',
                '--epochs', 1, '--no-progress')
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'an image could not be read while training' in r.stderr and 'paddy check --path' in r.stderr
    assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1
