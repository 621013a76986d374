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
    import shutil
    exe = [shutil.which('paddy')] if shutil.which('paddy') else [sys.executable, '-m', 'paddy_lib.cli']  # the console script
    r = subprocess.run([*exe, 'check', '--path', str(bad)], capture_output=True, text=True)
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


# --- checks moved from nbs/00_data.ipynb (issue 14): edge cases and error wording

@pytest.fixture
def demo(kaggle_demo_data):
    "conftest's demo data (80 training, 12 test images), shared by the session: read it, never break it."
    return kaggle_demo_data


def test_constants_and_error_types():
    from paddy_lib.data import VARIETIES, PaddyDataWarning, PaddyError, PaddyWarning
    from paddy_lib.data import LABELS
    assert len(LABELS) == 10 and len(VARIETIES) == 10
    assert issubclass(PaddyDataError, PaddyError) and issubclass(PaddyDataError, ValueError)  # `except ValueError` still catches it
    assert issubclass(PaddyDataWarning, PaddyWarning)


def test_demo_other_settings_is_an_error(demo):
    with pytest.raises(PaddyDataError, match=r'holds a demo made with other settings \(.*"seed": 42.*\): delete it'):
        make_demo_paddy(demo, n_train=80, n_test=12, seed=1)
    assert make_demo_paddy(demo, n_train=80, n_test=12) == demo   # the same settings: reused


def test_is_demo_data(demo, tmp_path):
    from paddy_lib.data import is_demo_data, default_pretrained
    assert is_demo_data(demo) and not is_demo_data(tmp_path) and not is_demo_data(None)
    assert default_pretrained(tmp_path) is True and default_pretrained(demo) is False


def test_get_variety_errors(demo, tmp_path):
    from paddy_lib.data import get_variety
    with pytest.raises(PaddyDataError, match=r'nope.jpg is not listed in .*train.csv: run check_paddy'):
        get_variety(demo/'train_images'/'blast'/'nope.jpg')
    with pytest.raises(PaddyDataError, match=r'is not under <root>/train_images/<label>/'): get_variety(tmp_path/'a'/'b'/'c.jpg')


def test_paddy_dls_missing_folder_and_dataset_from_items(demo, tmp_path):
    from paddy_lib.data import paddy_dls, dls_dataset
    with pytest.raises(PaddyDataError, match=r'does not exist: is .* a Paddy dataset\? \(check_paddy tells\)'): paddy_dls(tmp_path/'nowhere')
    dls = paddy_dls(demo, size=32, item=None, bs=8, seed=1, num_workers=0)
    assert dls_dataset(dls) == demo
    dls.data_path = None
    assert dls_dataset(dls) == demo    # found from the images: the folder above them that holds train_images/


def test_paddy_path_explicit_missing_folder(tmp_path):
    from paddy_lib.data import paddy_path
    with pytest.raises(PaddyDataError, match='does not exist: pass the folder that holds train.csv'): paddy_path(tmp_path/'nowhere')


def test_paddy_path_local_copies_in_order(demo, tmp_path, monkeypatch):
    "A copy you downloaded: the working directory, then ~/.fastai/data/, then ~/data/."
    import paddy_lib.data as pd_
    from paddy_lib.data import paddy_path, COMP
    work = _nowhere(monkeypatch, tmp_path)
    monkeypatch.setenv('HOME', str(tmp_path/'home'))
    assert [str(p) for p in pd_._local_copies(COMP)] == [str(work/COMP), str(tmp_path/'home'/'.fastai'/'data'/COMP),
                                                         str(tmp_path/'home'/'data'/COMP)]
    for where in (tmp_path/'home'/'data', tmp_path/'home'/'.fastai'/'data', work):
        where.mkdir(parents=True, exist_ok=True)
        (where/COMP).symlink_to(demo, target_is_directory=True)
        assert paddy_path(download=False) == where/COMP   # each one found wins over those after it


def test_paddy_path_on_kaggle_needs_the_competition_attached(monkeypatch):
    import paddy_lib.data
    from paddy_lib.data import paddy_path
    monkeypatch.setattr(paddy_lib.data, 'iskaggle', True)
    monkeypatch.delenv('PADDY_DATA', raising=False)
    with pytest.raises(PaddyDataError, match=r"/kaggle/input/not-attached not found: add the 'not-attached' competition "
                                             r"to this notebook \(Add Input > Competitions\)"):
        paddy_path(comp='not-attached')


def test_paddy_scale_and_data(demo, monkeypatch):
    from paddy_lib.data import paddy_scale, paddy_data, PaddyError
    monkeypatch.setenv('PADDY_SCALE', 'Demo')
    assert paddy_scale() == 'demo'
    monkeypatch.setenv('PADDY_SCALE', 'huge')
    with pytest.raises(PaddyError, match=r"PADDY_SCALE='huge': use 'demo' or 'full'"): paddy_scale()
    with pytest.raises(PaddyError, match=r"scale='big': use 'demo' or 'full'"): paddy_data('big')
    monkeypatch.setenv('PADDY_DEMO', str(demo))   # the demo made with other settings than paddy_data's: refused, not mixed
    with pytest.raises(PaddyDataError, match='other settings'): paddy_data('demo')


def test_check_submission_errors(demo):
    from paddy_lib.data import check_submission, PaddyError
    sub = pd.read_csv(demo/'sample_submission.csv').assign(label='blast')
    with pytest.raises(PaddyError, match=r'no column label: it needs exactly image_id,label'): check_submission(sub.drop(columns='label'), demo)
    with pytest.raises(PaddyError) as e: check_submission(pd.concat([sub.iloc[1:], sub.iloc[1:2]]).assign(label='rust'), demo)
    assert str(e.value).splitlines() == ['The submission is not valid:', f'- image ids more than once (1: {sub.image_id[1]})',
                                         f'- test images without a row (1: {sub.image_id[0]})', "- labels not in the competition's (1: rust)"]
    with pytest.raises(PaddyError, match=r'rows for unknown images \(1: x.jpg\)'):
        check_submission(pd.concat([sub, pd.DataFrame({'image_id': ['x.jpg'], 'label': ['blast']})]), demo)
