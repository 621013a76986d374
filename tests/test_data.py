"Behaviour of the data layer that a notebook can't show: concurrent demo builds, and the package as installed."
import json, subprocess, sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from paddy_lib.data import make_demo_paddy, check_paddy, PaddyDataError


def _build(dest): return str(make_demo_paddy(dest, n_train=60, n_test=8))


def test_concurrent_demo_builds_agree(tmp_path):
    "Notebooks run in parallel under nbdev-test, each asking for the demo data: one wins, all get the same valid dataset."
    dest = tmp_path/'demo'
    with ProcessPoolExecutor(3) as ex: paths = list(ex.map(_build, [dest]*3))
    assert set(paths) == {str(dest)}
    check_paddy(dest)
    assert len(pd.read_csv(dest/'train.csv')) >= 60
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.tmp-paddy-demo-')], 'temporary build folders left behind'


def test_demo_refuses_foreign_folder(tmp_path):
    (tmp_path/'mine.txt').write_text('precious')
    with pytest.raises(PaddyDataError, match='not a demo dataset'): make_demo_paddy(tmp_path)
    assert (tmp_path/'mine.txt').read_text() == 'precious'


def test_check_cli_reports_bad_data(tmp_path):
    "`paddy check` prints the problem and exits 1, without a traceback."
    bad = tmp_path/'bad'
    make_demo_paddy(bad, n_train=30, n_test=4)
    pd.read_csv(bad/'train.csv').drop(columns='variety').to_csv(bad/'train.csv', index=False)
    r = subprocess.run([sys.executable, '-m', 'paddy_lib.cli', 'check', '--path', str(bad)], capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'no column variety' in r.stdout + r.stderr
    assert 'Traceback' not in r.stdout + r.stderr


def _nowhere(monkeypatch, tmp_path):
    "No local copy, not on Kaggle, no PADDY_DATA: `paddy_path()` has to download or say what to do."
    import paddy_lib.data
    work = tmp_path/'work'; work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(paddy_lib.data, 'iskaggle', False)
    monkeypatch.delenv('PADDY_DATA', raising=False)
    return work


def test_paddy_path_rejected_key_is_a_clear_error(local_kaggle, tmp_path, monkeypatch):
    "The real kaggle client, pointed at the local Kaggle with a key it refuses: a PaddyDataError saying what to check."
    from paddy_lib.data import paddy_path, COMP
    work = _nowhere(monkeypatch, tmp_path)
    monkeypatch.setenv('KAGGLE_KEY', 'wrong')
    try: paddy_path()
    except SystemExit as e: pytest.fail(f'paddy_path let SystemExit({e.code}) escape')
    except PaddyDataError as e: msg = str(e)
    else: pytest.fail('paddy_path() found data that is not there')
    assert f'Downloading {COMP} from Kaggle failed' in msg
    for what in ('credentials', "accepted the competition's rules", 'connection'): assert what in msg, what
    assert not (work/COMP).exists() and not list(work.glob('*.zip')), 'a failed download left files behind'


def test_paddy_path_without_credentials_says_what_to_do(kaggle_empty_home, kaggle_no_internet, tmp_path, monkeypatch):
    from paddy_lib.data import paddy_path
    _nowhere(monkeypatch, tmp_path)
    with pytest.raises(PaddyDataError) as e: paddy_path()
    for what in ('was not found', 'KAGGLE_USERNAME and KAGGLE_KEY', 'kaggle.json', 'make_demo_paddy()'):
        assert what in str(e.value), what


def test_check_paddy_required_columns(tmp_path):
    "The message lists the columns `check_paddy` requires; `age`, which nothing reads, is optional."
    bad = make_demo_paddy(tmp_path/'d', n_train=30, n_test=4)
    df = pd.read_csv(bad/'train.csv')
    df.drop(columns='age').to_csv(bad/'train.csv', index=False)
    assert check_paddy(bad, images=False) == bad
    df.drop(columns=['variety', 'age']).to_csv(bad/'train.csv', index=False)
    with pytest.raises(PaddyDataError, match=r'no column variety \(it needs image_id, label, variety, and may have age;'):
        check_paddy(bad, images=False)
