"""MovieLens 100k in its real on-disk format goes through the same code as the synthetic ratings.

The notebook (nbs/05_collab.ipynb) holds the lesson and most checks; these tests pin the file format with lines
written by hand the way GroupLens ships them (not by our own writer), and run the whole pipeline on such a folder.
"""
import socket, warnings
import numpy as np, pandas as pd, pytest, torch
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai.torch_core import set_seed
import paddy_lib.collab as collab
from paddy_lib.collab import (CollabError, RATING_COLS, synth_ratings, read_ml100k, write_ml100k, load_movielens,
                              collab_dls, collab_sizes, mean_baseline, DotProductBias, item_bias_table, factor_pca,
                              similar_items)

# Lines in the format of the real files: u.data is tab-separated user, movie, rating, timestamp;
# u.item is pipe-separated latin-1: id|title|release date|video release date|IMDb URL|19 genre flags.
U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n244\t51\t2\t880606923\n196\t51\t5\t881250950\n"
U_ITEM = [
    "51|Legends of the Fall (1994)|01-Jan-1994||http://us.imdb.com/M/title-exact?Legends%20of%20the%20Fall%20(1994)|0|1|0|0|0|0|0|0|1|0|0|0|0|0|1|0|0|1|1",
    "242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "302|L.A. Confidential (1997)|01-Jan-1997||http://us.imdb.com/M/title-exact?L%2EA%2E+Confidential+(1997)|0|0|0|0|0|0|1|0|0|0|1|0|1|0|0|0|1|0|0",
    "377|Heavyweights (1994)|01-Jan-1994||http://us.imdb.com/M/title-exact?Heavyweights%20(1994)|0|0|0|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "1216|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Mis%E9rables%2C%20Les%20%281995%29|0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0",
]

@pytest.fixture
def ml_folder(tmp_path):
    d = tmp_path/'ml-100k'; d.mkdir()
    (d/'u.data').write_text(U_DATA)
    (d/'u.item').write_bytes(('\n'.join(U_ITEM)+'\n').encode('latin-1'))
    return d

def test_reads_the_real_format(ml_folder):
    r = load_movielens(ml_folder)
    assert tuple(r.columns) == RATING_COLS
    assert len(r) == 5  # no rating lost in the merge
    row = r[(r.user == 196) & (r.movie == 242)].iloc[0]
    assert (row.rating, row.timestamp, row.title) == (3, 881250949, 'Kolya (1996)')
    assert set(r[r.movie == 51].title) == {'Legends of the Fall (1994)'}
    assert r.rating.dtype.kind == 'i' and r.user.dtype.kind == 'i'

def test_latin1_title_round_trips(ml_folder, tmp_path):
    r = read_ml100k(ml_folder)
    extra = pd.DataFrame({'user': [7], 'movie': [1216], 'rating': [4], 'timestamp': [881250951],
                          'title': ['Misérables, Les (1995)']})
    out = write_ml100k(pd.concat([r, extra], ignore_index=True), tmp_path/'copy')
    assert 'Misérables'.encode('latin-1') in (out/'u.item').read_bytes()
    back = read_ml100k(out)
    assert 'Misérables, Les (1995)' in set(back.title)
    # our writer's u.item has the real file's 24 fields per line
    assert {len(l.split('|')) for l in (out/'u.item').read_text(encoding='latin-1').splitlines()} == {24}

def test_writer_and_reader_agree_on_synthetic(tmp_path):
    r = synth_ratings(n_users=50, n_items=40, n_ratings=600, seed=1)
    back = load_movielens(write_ml100k(r, tmp_path/'ml'))
    key = ['user', 'movie']
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True), r.sort_values(key).reset_index(drop=True))

def test_pipeline_runs_unchanged_on_a_real_format_folder(tmp_path):
    "The lesson's code, unchanged, on ratings read from a folder in the real format."
    folder = write_ml100k(synth_ratings(n_users=150, n_items=100, n_ratings=6000, seed=3), tmp_path/'ml-100k')
    ratings = load_movielens(folder)
    assert 'planted' not in ratings.attrs  # read from disk: nothing synthetic rides along
    dls = collab_dls(ratings, bs=256)
    n_users, n_movies = collab_sizes(dls)
    assert (n_users, n_movies) == (ratings.user.nunique()+1, ratings.title.nunique()+1)
    set_seed(0)
    learn = Learner(dls, DotProductBias(n_users, n_movies, 20), loss_func=MSELossFlat())
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 1e-2, wd=0.1)
    assert float(learn.recorder.values[-1][1]) < mean_baseline(dls)  # it learned something
    bt = item_bias_table(learn, n=3)
    assert list(bt.which) == ['lowest']*3 + ['highest']*3 and set(bt.title) <= set(ratings.title)
    pcs = factor_pca(learn)
    assert list(pcs.columns) == ['PC1', 'PC2', 'n_ratings'] and set(pcs.index) <= set(ratings.title)
    sim = similar_items(learn, pcs.n_ratings.idxmax(), n=4)
    assert len(sim) == 4 and sim.similarity.is_monotonic_decreasing

def test_not_a_movielens_folder(tmp_path, ml_folder):
    with pytest.raises(CollabError, match='not a MovieLens 100k folder'): load_movielens(tmp_path/'missing')
    (ml_folder/'u.item').unlink()
    with pytest.raises(CollabError, match='no u.item'): load_movielens(ml_folder)

def test_ratings_of_unknown_movies_are_not_dropped(ml_folder):
    (ml_folder/'u.data').write_text(U_DATA + "5\t999\t4\t881250952\n")
    with pytest.raises(CollabError, match='no line in u.item'): read_ml100k(ml_folder)

def test_offline_without_data_warns_and_synthesises(tmp_path, monkeypatch):
    monkeypatch.setattr(collab, 'ml100k_cache', lambda: tmp_path/'no-cache')
    def boom(*a, **k): raise AssertionError('must not download unless asked')
    monkeypatch.setattr(collab, 'untar_data', boom)
    with pytest.warns(UserWarning, match='download=True'):
        r = load_movielens(n_users=30, n_items=20, n_ratings=200)
    assert tuple(r.columns) == RATING_COLS and len(r) == 200 and 'planted' in r.attrs

def test_cached_copy_is_used(tmp_path, ml_folder, monkeypatch):
    monkeypatch.setattr(collab, 'ml100k_cache', lambda: ml_folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        r = load_movielens()
    assert len(r) == 5 and 'planted' not in r.attrs  # the cached real data, not the synthetic fallback
    assert not [w for w in caught if 'synth_ratings' in str(w.message)]

def test_failed_download_is_a_clear_error_and_restores_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(collab, 'ml100k_cache', lambda: tmp_path/'no-cache')
    seen = {}
    def offline(url, **kw):
        seen['timeout'] = socket.getdefaulttimeout()
        raise OSError('[Errno 101] Network is unreachable')
    monkeypatch.setattr(collab, 'untar_data', offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(CollabError, match='could not download MovieLens 100k'): load_movielens(download=True, timeout=2)
    assert seen['timeout'] == 2 and socket.getdefaulttimeout() == before

def test_bad_ratings():
    r = synth_ratings(n_users=20, n_items=10, n_ratings=100)
    with pytest.raises(CollabError, match=r"missing column\(s\) \['user'\]"): collab_dls(r.drop(columns='user'))
    with pytest.raises(CollabError, match='empty'): collab_dls(r.iloc[:0])
    with pytest.raises(CollabError, match='distinct'): synth_ratings(n_users=3, n_items=3, n_ratings=10)
    with pytest.raises(CollabError, match='noise > 0'): synth_ratings(noise=0)

def test_synthetic_is_deterministic_and_bounded():
    a, b = synth_ratings(n_users=40, n_items=30, n_ratings=500, seed=7), synth_ratings(n_users=40, n_items=30, n_ratings=500, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert a.rating.between(1, 5).all() and not a.duplicated(['user', 'movie']).any()
    p = a.attrs['planted']
    assert np.allclose(p.probs(a).sum(1), 1) and 0 < p.noise_floor(a) < a.rating.var()
