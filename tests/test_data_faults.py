"Faults in data a user really has (issue 12): CSVs not in UTF-8, labels with no or too few images, submissions with extra columns; through the console script where the user meets them."
import io, os, shutil, subprocess, sys, warnings
from pathlib import Path

import pandas as pd
import pytest

from paddy_lib.data import (PaddyError, PaddyDataError, PaddyDataWarning, make_demo_paddy, check_paddy, check_submission,
                            read_paddy_csv, get_variety, smallest_label)

PADDY = [shutil.which('paddy')] if shutil.which('paddy') else [sys.executable, '-m', 'paddy_lib.cli']


def start_paddy(*args, env=None, log):
    "Start the `paddy` console script, its output (stdout + stderr) to the file `log`."
    with open(log, 'w') as f:
        return subprocess.Popen([*PADDY, *map(str, args)], stdout=f, stderr=subprocess.STDOUT, text=True, env=env)


def finish(run):
    "Wait for a `cli` run: its exit status and its output."
    try: run['proc'].wait(timeout=300)
    except subprocess.TimeoutExpired: run['proc'].kill(); run['proc'].wait()
    return run['proc'].returncode, run['log'].read_text()


@pytest.fixture(scope='module')
def demo(tmp_path_factory): return make_demo_paddy(tmp_path_factory.mktemp('faults')/'paddy', n_train=80, n_test=12)


@pytest.fixture
def data(demo, tmp_path):
    "A fresh copy of the demo data to break."
    return Path(shutil.copytree(demo, tmp_path/'paddy'))


CLI = {}  # the console-script tests' set-ups: name -> f(data, tmp) -> (args, env, what the test needs besides)

def cli_case(f): CLI[f.__name__] = f; return f


@pytest.fixture(scope='module')
def cli(demo, tmp_path_factory):
    """The module's `paddy` commands, each on its own broken copy of the demo, all started at once (each spends most of
    its time importing fastai, on one core): name -> dict(data, tmp, proc, log, ...). Each test waits for its own."""
    runs = {}
    for name, setup in CLI.items():
        tmp = tmp_path_factory.mktemp(name)
        data = Path(shutil.copytree(demo, tmp/'paddy'))
        args, env, extra = setup(data, tmp)
        runs[name] = dict(data=data, tmp=tmp, log=tmp/'paddy.log', **extra)
        runs[name]['proc'] = start_paddy(*args, env=env, log=runs[name]['log'])
    yield runs
    for r in runs.values():
        if r['proc'].poll() is None: r['proc'].kill(); r['proc'].wait()


def _to_latin1(data, variety='Ponní'):
    "train.csv re-saved in latin-1, one variety with a non-ASCII letter; the byte offset of that letter."
    df = pd.read_csv(data/'train.csv')
    df.loc[3, 'variety'] = variety
    df.to_csv(data/'train.csv', index=False, encoding='latin-1')
    raw = (data/'train.csv').read_bytes()
    return raw.index('í'.encode('latin-1'))


# --- CSVs that are not UTF-8

@cli_case
def check_latin1(data, tmp): return ('check', '--path', data), None, dict(pos=_to_latin1(data))

def test_check_cli_latin1_train_csv(cli):
    "`paddy check` on a latin-1 train.csv: exit 1, one message naming the file, the byte, and how to re-save; no traceback."
    run = cli['check_latin1']
    data, pos = run['data'], run['pos']
    rc, out = finish(run)
    assert rc == 1, out
    assert 'Traceback' not in out and 'UnicodeDecodeError' not in out, out
    assert f"{data/'train.csv'} is not UTF-8" in out
    assert f'byte 0xed at position {pos:,} (line 5:' in out   # row 3 of the data is line 5 (header, rows 0-2 before)
    assert 'iconv -f latin1 -t utf-8' in out and "encoding='latin-1'" in out
    # the advice works: re-saved as the message says, the data checks
    p = data/'train.csv'; p.write_text(p.read_text(encoding='latin-1'), encoding='utf-8')
    assert check_paddy(data, images=False) == data
    assert 'Ponní' in set(read_paddy_csv(p).variety)


@cli_case
def ensemble_latin1(data, tmp):
    _to_latin1(data)
    return ('ensemble', '--path', data, '--out', tmp/'runs', '--epochs', 1, '--submission', tmp/'sub.csv'), None, {}

def test_ensemble_cli_latin1_stops_before_training(cli):
    "`paddy ensemble` checks the data first: the same one message, exit 1, nothing trained or written."
    run = cli['ensemble_latin1']
    data, out_dir, tmp_path = run['data'], run['tmp']/'runs', run['tmp']
    rc, out = finish(run)
    assert rc == 1, out
    assert 'Traceback' not in out and f"{data/'train.csv'} is not UTF-8" in out, out
    assert not out_dir.exists() and not (tmp_path/'sub.csv').exists()


def test_latin1_sample_submission_and_submission(data, tmp_path):
    "sample_submission.csv and a submission CSV: the same error, naming that file; never a UnicodeDecodeError."
    ss = pd.read_csv(data/'sample_submission.csv')
    ss.assign(label='blast').to_csv(tmp_path/'ok.csv', index=False)
    ss.assign(label='blást').to_csv(tmp_path/'sub.csv', index=False, encoding='latin-1')
    with pytest.raises(PaddyDataError, match=r"sub\.csv is not UTF-8 text .*line 2:"): check_submission(tmp_path/'sub.csv', data)
    pd.concat([ss, pd.DataFrame({'image_id': ['café.jpg'], 'label': ['']})]).to_csv(data/'sample_submission.csv', index=False,
                                                                                   encoding='latin-1')
    with pytest.raises(PaddyDataError, match=r'sample_submission\.csv is not UTF-8'): check_paddy(data, images=False)
    with pytest.raises(PaddyDataError, match=r'sample_submission\.csv is not UTF-8'): check_submission(tmp_path/'ok.csv', data)


def test_seed_helpers_on_latin1_train_csv(data):
    "`get_variety` (called by DataLoader workers) and `smallest_label` (memory probes): a PaddyDataError, not a UnicodeDecodeError."
    _to_latin1(data)
    img = next((data/'train_images'/'blast').iterdir())
    with pytest.raises(PaddyDataError, match='train.csv is not UTF-8'): get_variety(img)
    with pytest.raises(PaddyDataError, match='train.csv is not UTF-8'): smallest_label(data)


def test_read_paddy_csv_position_is_the_files(tmp_path):
    "The byte position is the file's, not pandas' chunk's: a bad byte 1.5 MB in (pandas decodes 256 KiB chunks)."
    rows = [f'{100000+i}.jpg,blast,ADT45,45' for i in range(50_000)]
    rows[40_000] = '140000.jpg,blast,Ponní,45'
    raw = ('image_id,label,variety,age\n' + '\n'.join(rows) + '\n').encode('latin-1')
    assert len(raw) > 1_000_000
    (tmp_path/'big.csv').write_bytes(raw)
    pos = raw.index(b'\xed')
    with pytest.raises(PaddyDataError) as e: read_paddy_csv(tmp_path/'big.csv')
    assert f'byte 0xed at position {pos:,} (line 40002:' in str(e.value)
    assert "'140000.jpg,blast,Ponn\ufffd,45'" in str(e.value)
    with pytest.raises(PaddyDataError, match='not UTF-8 text'): read_paddy_csv(io.BytesIO(raw))  # a buffer: still clear
    assert read_paddy_csv(tmp_path/'big.csv', encoding='latin-1').variety[40_000] == 'Ponní'  # the encoding given: read
    good = tmp_path/'utf8.csv'; good.write_bytes(raw.decode('latin-1').encode('utf-8'))
    assert read_paddy_csv(good, dtype=str).variety[40_000] == 'Ponní'


# --- labels with no image, or too few for the validation split

def _drop_images(data, label, keep):
    "Keep the first `keep` images of `label` (on disk and in train.csv)."
    for f in sorted((data/'train_images'/label).iterdir())[keep:]: f.unlink()
    df = pd.read_csv(data/'train.csv')
    kept = set(os.listdir(data/'train_images'/label))
    df[(df.label != label) | df.image_id.isin(kept)].to_csv(data/'train.csv', index=False)


@cli_case
def check_small_labels(data, tmp):
    _drop_images(data, 'tungro', 0)   # an empty folder, and no row: a model of 9 classes
    _drop_images(data, 'hispa', 2)
    return ('check', '--path', data), None, {}

def test_check_cli_warns_for_empty_and_small_labels(cli):
    "`paddy check`: exit 0, each warning one readable line (`warning: ...`), no traceback or source line."
    run = cli['check_small_labels']
    data = run['data']
    rc, out = finish(run)
    assert rc == 0, out
    warns = [l for l in out.splitlines() if l.startswith('warning: ')]
    assert len(warns) == 2, out
    assert f'{data}: labels with no training image (1: tungro): the model will have 9 classes, not 10' in warns[0]
    assert 'labels with fewer than 5 training images (hispa: 2): a random 20% validation split' in warns[1]
    assert 'often none' in warns[1]
    for bad in ('Traceback', 'warnings.warn', 'PaddyDataWarning', 'UserWarning', 'data.py'): assert bad not in out, (bad, out)
    assert f'{data}: OK' in out


def test_check_paddy_warning_thresholds(data):
    "Fewer than 1/valid_pct images warns, that many doesn't; the demo as made passes without a warning."
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        check_paddy(data, images=False)
    _drop_images(data, 'hispa', 5)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        check_paddy(data, images=False)   # 5 × 0.2 = one validation image on average: no warning
    with pytest.warns(PaddyDataWarning, match=r'fewer than 10 training images \(hispa: 5, .*, \.\.\. 7 in all\)'): check_paddy(data, images=False, valid_pct=0.1)
    _drop_images(data, 'hispa', 4)
    with pytest.warns(PaddyDataWarning, match=r'fewer than 5 training images \(hispa: 4\)'): check_paddy(data, images=False)


def test_empty_label_folder_listed_in_train_csv_is_an_error(data):
    "A folder emptied while train.csv still lists its images: an error (they are missing), not a warning."
    for f in (data/'train_images'/'tungro').iterdir(): f.unlink()
    with pytest.raises(PaddyDataError, match=r'listed in train.csv but missing on disk \(\d+: tungro/'): check_paddy(data, images=False)


def test_own_labels_are_not_measured_against_the_competitions(data):
    "A dataset with labels of its own (not the competition's): no 'no training image' warning for the 10 it doesn't use."
    df = pd.read_csv(data/'train.csv')
    for lbl in ('hispa', 'tungro'):
        (data/'train_images'/lbl).rename(data/'train_images'/f'my_{lbl}')
        df.loc[df.label == lbl, 'label'] = f'my_{lbl}'
    df[df.label.str.startswith('my_')].to_csv(data/'train.csv', index=False)
    for d in (data/'train_images').iterdir():
        if not d.name.startswith('my_'): shutil.rmtree(d)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        check_paddy(data, images=False)


# --- submissions with extra columns

@cli_case
def submit_extra_columns(data, tmp):
    home = tmp/'home'; home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith('KAGGLE_')}
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(home/'.kaggle'))
    sub = tmp/'extra.csv'
    pd.read_csv(data/'sample_submission.csv').assign(label='blast', extra=1).to_csv(sub, index=False)
    return ('submit', sub, 'all blast', '--path', data), env, dict(sub=sub, before=sub.read_bytes())

def test_submit_cli_refuses_extra_columns(cli):
    "`paddy submit` on image_id,label,extra: exit 1 with the columns named, before any Kaggle call (no credentials here)."
    run = cli['submit_extra_columns']
    sub, before = run['sub'], run['before']
    rc, out = finish(run)
    assert rc == 1, out
    assert 'extra columns (extra): it must have exactly the columns image_id,label' in out, out
    assert 'Traceback' not in out and 'credentials' not in out.lower(), out   # stopped before the Kaggle client
    assert sub.read_bytes() == before


def test_check_submission_extra_columns(data, tmp_path):
    "Extra columns in a CSV or a DataFrame: refused, naming each; an index saved by pandas gets the index=False hint."
    sub = pd.read_csv(data/'sample_submission.csv').assign(label='blast')
    sub.to_csv(tmp_path/'idx.csv')   # index=True: an 'Unnamed: 0' column
    with pytest.raises(PaddyError, match=r"extra columns \(Unnamed: 0\).*save with index=False"): check_submission(tmp_path/'idx.csv', data)
    with pytest.raises(PaddyError, match=r'extra columns \(prob, fold\)'): check_submission(sub.assign(prob=0.9, fold=1), data)
    assert list(check_submission(sub, data).columns) == ['image_id', 'label']


# --- too little data for one batch (paddy_learner, 02_training)

def test_small_data_error_advises_what_the_cli_can_set(demo):
    "The advice names what `paddy ensemble` can change (a member's accum, eff_bs stays 64), and following it works."
    from paddy_lib.training import paddy_learner
    small = demo/'train_images'/'bacterial_panicle_blight'   # 8 images: 7 to train on after the 20% validation split (int(0.2*8) = 1)
    with pytest.raises(PaddyError) as e: paddy_learner('resnet18', 32, path=demo, trn_path=small, num_workers=0)
    msg = str(e.value)
    assert msg.startswith('7 training images (after the validation split) make no full batch of 64'), msg
    assert 'a larger `accum` that divides eff_bs=64' in msg and "a member's `accum` in its --configs file" in msg
    learn = paddy_learner('resnet18', 32, path=demo, trn_path=small, accum=16, num_workers=0)   # batches of 4
    assert learn.dls.train.bs == 4 and len(learn.dls.train) == 1


# --- the layout, every problem at once, truncated images (moved from nbs/00_data.ipynb, issue 14)

def test_check_paddy_layout_errors(data, tmp_path):
    "A label without a folder; a folder that is not a dataset; a path that is not a folder."
    import shutil
    shutil.rmtree(data/'train_images'/'tungro')
    with pytest.raises(PaddyDataError, match=r'labels in train.csv without a folder in train_images/ \(1: tungro\)'):
        check_paddy(data, images=False)
    with pytest.raises(PaddyDataError, match=r'is missing train.csv, sample_submission.csv, train_images, test_images: the Paddy'):
        check_paddy(tmp_path/'paddy'/'train_images')
    with pytest.raises(PaddyDataError, match='is not a folder'): check_paddy(data/'train.csv')


def test_check_paddy_lists_every_problem(data):
    "Unlisted and duplicated training images, a sample_submission row without an image: one error, a line each."
    df = pd.read_csv(data/'train.csv')
    (data/'train_images'/'blast'/'999999.jpg').write_bytes((data/'train_images'/'blast'/df[df.label == 'blast'].image_id.iloc[0]).read_bytes())
    pd.concat([df, df.iloc[:1]]).to_csv(data/'train.csv', index=False)
    ss = pd.read_csv(data/'sample_submission.csv')
    pd.concat([ss, pd.DataFrame({'image_id': ['nope.jpg'], 'label': ['']})]).to_csv(data/'sample_submission.csv', index=False)
    with pytest.raises(PaddyDataError) as e: check_paddy(data, images=False)
    lines = str(e.value).splitlines()
    assert lines[0] == f'{data} is not usable Paddy Doctor data:'
    assert lines[1:4] == ["- images in train_images/ not listed in train.csv, or under another label (1: blast/999999.jpg)",
                          f"- image ids listed more than once in train.csv (1: {df.image_id[0]})",
                          "- sample_submission.csv rows without a test image (1: nope.jpg)"]
    assert lines[-1].startswith('Fix or remove these files')


def test_check_paddy_names_truncated_image(data):
    f = next((data/'test_images').iterdir()); f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(PaddyDataError, match=rf'unreadable or truncated images \(1: test_images/{f.name}\); first error: '):
        check_paddy(data)
    assert check_paddy(data, images=False) == data   # images=False: only the files and CSVs
