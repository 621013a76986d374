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
